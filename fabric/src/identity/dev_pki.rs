//! The certificates of a `fabricd dev` cluster, made in its data directory so that a local
//! cluster runs with mutual TLS everywhere and nothing to set up: a CA (`DATA/ca`), a
//! certificate per node (`DATA/node-ID/tls`, where `fabricd node` looks by default), the
//! gateway's (`DATA/gateway/tls`) and the administrator's (`DATA/admin`, where `fabricctl
//! --data-dir DATA` looks). Servers' certificates name 127.0.0.1 and localhost.
//!
//! What exists is kept: a restart finds the same CA and certificates, and only a missing,
//! unreadable or expired certificate is issued again. The CA's keys sit in the data directory
//! — fine for a development cluster, and the one thing a production CA must never do.

use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use super::ca::{self, CertificateAuthority};
use super::issue::{LEAF_VALIDITY_DAYS_DEFAULT, LeafRequest, ServerSan};
use super::load::Identity;
use super::{ClusterName, IdentityError, Principal, PrincipalKind};

/// The cluster name of every dev cluster.
pub const DEV_CLUSTER: &str = "dev";
/// The administrator's user name in a dev cluster.
pub const DEV_ADMIN: &str = "admin";
/// Where, under the data directory, the administrator's certificate directory is.
pub const ADMIN_DIR: &str = "admin";
/// The user (and directory) of a dev cluster's second person.
pub const DEV_APPROVER: &str = "approver";
/// Where, under the data directory, the CA is.
pub const CA_DIR: &str = "ca";

/// The certificate directories of a dev cluster's data directory.
#[derive(Clone, Debug)]
pub struct DevPki {
    data_dir: PathBuf,
}

impl DevPki {
    /// Opens the dev PKI of `data_dir`, creating its CA if there is none yet.
    pub fn ensure(data_dir: &Path) -> Result<DevPki, IdentityError> {
        let pki = DevPki {
            data_dir: data_dir.to_path_buf(),
        };
        if CertificateAuthority::open(&pki.ca_dir()).is_err() {
            ca::init(
                &pki.ca_dir(),
                &ClusterName::new(DEV_CLUSTER)?,
                OffsetDateTime::now_utc(),
            )?;
        }
        Ok(pki)
    }

    pub fn ca_dir(&self) -> PathBuf {
        self.data_dir.join(CA_DIR)
    }

    pub fn node_dir(&self, id: u64) -> PathBuf {
        self.data_dir
            .join(format!("node-{id}"))
            .join(crate::node::NODE_CERT_DIR)
    }

    pub fn gateway_dir(&self, name: &str) -> PathBuf {
        self.data_dir.join("gateways").join(name)
    }

    pub fn admin_dir(&self) -> PathBuf {
        self.data_dir.join(ADMIN_DIR)
    }

    /// The administrator's principal, cluster-admin from the start.
    pub fn admin_principal() -> Principal {
        Principal::new(
            ClusterName::new(DEV_CLUSTER).expect("valid"),
            PrincipalKind::User(DEV_ADMIN.into()),
        )
        .expect("valid")
    }

    /// Makes sure node `id` has a valid certificate; returns its directory.
    pub fn ensure_node(&self, id: u64) -> Result<PathBuf, IdentityError> {
        let dir = self.node_dir(id);
        self.ensure_leaf(&dir, PrincipalKind::Node(id), true)?;
        Ok(dir)
    }

    /// Makes sure gateway `name` has a valid certificate; returns its directory.
    pub fn ensure_gateway(&self, name: &str) -> Result<PathBuf, IdentityError> {
        let dir = self.gateway_dir(name);
        self.ensure_leaf(&dir, PrincipalKind::Gateway(name.into()), true)?;
        Ok(dir)
    }

    /// The second person of a dev cluster run with `--two-person`: user `approver`, whose
    /// certificate is in `DATA_DIR/approver`.
    pub fn approver_principal() -> Principal {
        Principal::new(
            ClusterName::new(DEV_CLUSTER).expect("valid"),
            PrincipalKind::User(DEV_APPROVER.into()),
        )
        .expect("valid")
    }

    /// Makes sure the approver has a valid certificate; returns its directory.
    pub fn ensure_approver(&self) -> Result<PathBuf, IdentityError> {
        let dir = self.data_dir.join(DEV_APPROVER);
        self.ensure_leaf(&dir, PrincipalKind::User(DEV_APPROVER.into()), false)?;
        Ok(dir)
    }

    /// Makes sure the administrator has a valid certificate; returns its directory.
    pub fn ensure_admin(&self) -> Result<PathBuf, IdentityError> {
        let dir = self.admin_dir();
        self.ensure_leaf(&dir, PrincipalKind::User(DEV_ADMIN.into()), false)?;
        Ok(dir)
    }

    fn ensure_leaf(
        &self,
        dir: &Path,
        kind: PrincipalKind,
        serves: bool,
    ) -> Result<(), IdentityError> {
        if let Ok(identity) = Identity::load(dir)
            && identity.principal().kind() == &kind
        {
            return Ok(());
        }
        let names = match serves {
            true => vec![
                ServerSan::Ip(std::net::Ipv4Addr::LOCALHOST.into()),
                ServerSan::Dns("localhost".into()),
            ],
            false => Vec::new(),
        };
        let ca = CertificateAuthority::open(&self.ca_dir())?;
        let request = LeafRequest::for_days(
            kind,
            names,
            OffsetDateTime::now_utc(),
            LEAF_VALIDITY_DAYS_DEFAULT,
        )?;
        ca.issue(&request)?.write(dir, true, ca.root_pin())?;
        Ok(())
    }
}
