//! Residency at the API: labelling locations (`topology.label`, guarded by the two-person
//! rule) and the signed statement of where a volume's replicas sit.

use std::collections::BTreeMap;

use proto::meta as pb;
use tonic::{Request, Response, Status};

use super::MetadataService;
use crate::audit::residency::{ReplicaPlace, Statement};
use crate::meta::auth::Verb;
use crate::meta::command::CommandV1;
use crate::meta::pgmap::Labels;
use crate::meta::state::ClusterState;
use crate::meta::state_residency::rule_words;

fn labels_out(labels: &Labels) -> pb::Labels {
    pb::Labels {
        locations: labels
            .iter()
            .map(|(location, labels)| pb::LocationLabels {
                location: location.clone(),
                labels: labels.clone().into_iter().collect(),
            })
            .collect(),
    }
}

/// The labels `location` carries: those of each of its levels, the narrower winning.
fn labels_of(
    state: &ClusterState,
    location: &crate::meta::model::Location,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (level, name) in &location.levels {
        if let Some(l) = state.labels.get(&format!("{level}={name}")) {
            out.extend(l.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
    }
    out
}

/// The statement of where volume `name`'s replicas sit, read from `state`.
fn statement(state: &ClusterState, name: &str) -> Result<Statement, Status> {
    let volume = state
        .volumes
        .get(name)
        .ok_or_else(|| Status::not_found(format!("volume {name} not found")))?;
    let pool = state
        .pools
        .get(&volume.spec.pool)
        .ok_or_else(|| Status::not_found(format!("pool {} not found", volume.spec.pool)))?;
    let rule = &pool.spec.rule.tag_filter;
    let mut replicas = Vec::new();
    for (pg, nodes) in pool.map.pgs.iter().enumerate() {
        let leaving = pool.map.leaving.get(&(pg as u32));
        for node in nodes {
            let location = state
                .nodes
                .get(node)
                .map(|n| n.registration.location.clone())
                .unwrap_or_default();
            replicas.push(ReplicaPlace {
                pg: pg as u32,
                node: *node,
                location: location
                    .levels
                    .iter()
                    .map(|(l, n)| format!("{l}={n}"))
                    .collect::<Vec<_>>()
                    .join(","),
                labels: labels_of(state, &location),
                leaving: leaving.is_some_and(|l| l.contains(node)),
            });
        }
    }
    let inside = replicas.iter().all(|r| {
        rule.iter().all(|(k, v)| {
            r.labels.get(k) == Some(v) || r.location.split(',').any(|kv| kv == format!("{k}={v}"))
        })
    });
    Ok(Statement {
        volume: name.to_owned(),
        pool: pool.spec.name.clone(),
        rule: rule_words(rule),
        time_ms: crate::meta::clock::unix_ms(),
        cluster_epoch: state.cluster_epoch,
        replicas,
        inside,
    })
}

impl MetadataService {
    pub(super) async fn set_labels_call(
        &self,
        req: Request<pb::SetLabelsRequest>,
    ) -> Result<Response<pb::Labels>, Status> {
        let auth = self.authorize_cluster(&req, Verb::TopologyLabel).await?;
        let pb::SetLabelsRequest { location, labels } = req.into_inner();
        let command = CommandV1::SetLabels {
            location,
            labels: labels.into_iter().collect(),
        };
        self.guarded_write(&auth, "topology.relabel", String::new(), command)
            .await?;
        Ok(Response::new(
            self.member.sm.read(|s, _| labels_out(&s.labels)),
        ))
    }

    pub(super) async fn list_labels_call(
        &self,
        req: Request<pb::ListLabelsRequest>,
    ) -> Result<Response<pb::Labels>, Status> {
        self.authorize_cluster(&req, Verb::ClusterStatus).await?;
        Ok(Response::new(
            self.member.sm.read(|s, _| labels_out(&s.labels)),
        ))
    }

    pub(super) async fn volume_residency_call(
        &self,
        req: Request<pb::GetVolumeRequest>,
    ) -> Result<Response<pb::ResidencyStatement>, Status> {
        let name = req.get_ref().name.clone();
        self.authorize_volume(&req, Verb::VolumeGet, &name).await?;
        // A statement is of the committed state: the leader's read index, then this member's
        // state once it applied that far.
        let applied = match self
            .member
            .read(crate::meta::query::Query::VolumeMap(name.clone()))
            .await
            .map_err(super::convert::status_of)?
        {
            crate::meta::query::QueryReply::VolumeMap(Some(map)) => map.applied_index,
            _ => return Err(Status::not_found(format!("volume {name} not found"))),
        };
        self.member
            .applied_at_least(applied)
            .await
            .map_err(super::convert::status_of)?;
        let (statement, key, chain) = self.member.sm.read(|s, _| {
            let key = s.signing_key();
            let chain = key.as_ref().and_then(|k| {
                s.cell_key_certs
                    .get(&crate::hex::encode(k.verifying_key().as_bytes()))
                    .cloned()
            });
            (statement(s, &name), key, chain)
        });
        let statement = statement?;
        let key = key.ok_or_else(|| Status::unavailable("the cluster has no cell key yet"))?;
        let chain = chain.ok_or_else(|| {
            Status::failed_precondition(
                "the cell key is not certified yet: a member started with --ca-dir certifies it",
            )
        })?;
        let signed = statement.sign(&key, chain);
        Ok(Response::new(pb::ResidencyStatement {
            statement_json: serde_json::to_string(&signed).expect("a statement serializes"),
        }))
    }
}
