//! Streaming `prepare`: tokens per second and peak memory (VmHWM) of tokenizing a corpus into
//! shards, at two corpus sizes, as JSONL, as Parquet (written by pyarrow from the project's
//! virtual environment) and as a directory of text files, byte-level; then BPE
//! (trained on the corpus, then encoding it) on a smaller slice; then what opening the shards for
//! training costs in memory. Each measurement runs in a child process of its own, so that each
//! peak is that run's alone. The corpus is written on the fly from Tiny Shakespeare's paragraphs,
//! each document numbered so that no two are the same, and removed afterwards.
//!
//!   cargo bench -p frugal-trainer --bench prepare_stream -- [MB ...] [--bpe MB]
//!
//! Defaults: 250 and 1000 MB, BPE on 32 MB.

use frugal_trainer::config::{DataConfig, DataSource};
use frugal_trainer::data::{Corpus, Data, TokenizerSource, prepare};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

const SHAKESPEARE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/tinyshakespeare.txt");
/// About this many bytes of text a document.
const DOCUMENT_BYTES: usize = 4096;
/// Documents a text file of the text-directory corpus holds (as one document).
const DOCUMENTS_PER_FILE: usize = 256;

/// A `/proc/self/status` figure, KiB.
fn status_kib(key: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix(key)?.trim().strip_suffix("kB")?.trim().parse().ok()).unwrap_or(0)
}

/// Documents of about `total` bytes in all.
fn generate(total: u64, mut each: impl FnMut(&str)) {
    let text = std::fs::read_to_string(SHAKESPEARE).expect("data/tinyshakespeare.txt");
    let paragraphs: Vec<&str> = text.split("\n\n").collect();
    let (mut written, mut p, mut n) = (0u64, 0usize, 0u64);
    let mut doc = String::with_capacity(DOCUMENT_BYTES * 2);
    while written < total {
        doc.clear();
        doc.push_str(&format!("Document {n}.\n"));
        while doc.len() < DOCUMENT_BYTES {
            doc.push_str(paragraphs[p % paragraphs.len()]);
            doc.push_str("\n\n");
            p += 7;
        }
        each(&doc);
        written += doc.len() as u64;
        n += 1;
    }
}

fn write_jsonl(path: &Path, total: u64) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    generate(total, |doc| writeln!(f, "{}", serde_json::json!({"text": doc})).unwrap());
    f.flush().unwrap();
}

/// The JSONL corpus as Parquet, written by pyarrow (the project's virtual environment) in row
/// groups of 4,096 documents with pyarrow's default pages (1 MiB) and compression (snappy).
fn write_parquet(path: &Path, total: u64) {
    let jsonl = path.with_extension("jsonl");
    write_jsonl(&jsonl, total);
    let python = std::env::var_os("FRUGAL_VENV").map_or_else(|| PathBuf::from("python3"), |v| PathBuf::from(v).join("bin/python"));
    let script = r#"
import json, sys
import pyarrow as pa, pyarrow.parquet as pq
schema = pa.schema([("text", pa.string())])
with pq.ParquetWriter(sys.argv[2], schema) as w:
    batch = []
    for line in open(sys.argv[1]):
        batch.append(json.loads(line)["text"])
        if len(batch) == 4096:
            w.write_table(pa.table({"text": batch}, schema=schema))
            batch = []
    if batch:
        w.write_table(pa.table({"text": batch}, schema=schema))
"#;
    let status = std::process::Command::new(python).arg("-c").arg(script).arg(&jsonl).arg(path).status().expect("python runs");
    assert!(status.success(), "writing Parquet needs pyarrow: source scripts/env.sh && frugal_setup_interop");
    std::fs::remove_file(&jsonl).unwrap();
}

fn write_text_dir(dir: &Path, total: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let (mut file, mut in_file, mut files) = (None::<std::io::BufWriter<std::fs::File>>, 0, 0);
    generate(total, |doc| {
        if file.is_none() || in_file == DOCUMENTS_PER_FILE {
            file = Some(std::io::BufWriter::new(std::fs::File::create(dir.join(format!("{files:06}.txt"))).unwrap()));
            files += 1;
            in_file = 0;
        }
        file.as_mut().unwrap().write_all(doc.as_bytes()).unwrap();
        in_file += 1;
    });
}

/// In the child: one prepare, its figures as one JSON line.
fn child_prepare(format: &str, tokenizer: &str, corpus: &Path, out: &Path) {
    let corpus = match format {
        "jsonl" => Corpus::jsonl(corpus, "text"),
        "parquet" => Corpus::parquet(corpus, "text"),
        _ => Corpus::text(corpus),
    };
    let (source, vocab) = match tokenizer {
        "bpe" => (TokenizerSource::Bpe, 8192),
        "byte" => (TokenizerSource::Byte, 257),
        file => (TokenizerSource::File { path: file.into(), end_of_text: None }, 8192),
    };
    let idle = status_kib("VmHWM:");
    let start = Instant::now();
    let p = prepare(&corpus, &source, vocab, 0.01, out, 100_000_000).unwrap();
    let seconds = start.elapsed().as_secs_f64();
    let tokens = p.meta.train_tokens + p.meta.val_tokens;
    println!(
        "{}",
        serde_json::json!({"tokens": tokens, "bytes": p.bytes, "documents": p.documents, "seconds": seconds,
            "vmhwm_kib": status_kib("VmHWM:"), "idle_vmhwm_kib": idle})
    );
}

/// In the child: the shards opened for training and 1,000 batches drawn.
fn child_open(shards: &Path) {
    let idle = status_kib("RssAnon:");
    let cfg = DataConfig { source: DataSource::Shards { path: shards.into() }, validation_fraction: 0.01, eval_sequences: 64 };
    let start = Instant::now();
    let mut data = Data::new(&cfg, 257, 1024, 1).unwrap();
    let opened = start.elapsed().as_secs_f64();
    let open_vmhwm = status_kib("VmHWM:");
    for _ in 0..1000 {
        let _ = data.next_batch(8);
    }
    let _ = data.validation(8);
    println!(
        "{}",
        serde_json::json!({"tokens": data.training_tokens().len(), "open_seconds": opened, "rss_anon_kib": status_kib("RssAnon:"),
            "idle_rss_anon_kib": idle, "open_vmhwm_kib": open_vmhwm, "vmhwm_kib": status_kib("VmHWM:")})
    );
}

fn run_child(args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(std::env::current_exe().unwrap()).arg("--child").args(args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let line = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().to_string();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

fn mib(kib: &serde_json::Value) -> f64 {
    kib.as_f64().unwrap_or(0.0) / 1024.0
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    if args.first().map(String::as_str) == Some("--child") {
        match args[1].as_str() {
            "open" => child_open(Path::new(&args[2])),
            format => child_prepare(format, &args[2], Path::new(&args[3]), Path::new(&args[4])),
        }
        return;
    }
    let mut sizes: Vec<u64> = vec![];
    let mut bpe_mb = 32;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--bpe" {
            bpe_mb = it.next().and_then(|v| v.parse().ok()).expect("--bpe MB");
        } else {
            sizes.push(a.parse().expect("sizes in MB"));
        }
    }
    if sizes.is_empty() {
        sizes = vec![250, 1000];
    }
    let root: PathBuf = std::env::temp_dir().join(format!("frugal-prepare-bench-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    println!("streaming prepare, byte-level, validation 1%, shards of 100M tokens; one child process per row");
    println!("{:>8} {:>6} {:>14} {:>10} {:>12} {:>14} {:>16}", "corpus", "format", "tokens", "seconds", "tokens/s", "VmHWM MiB", "at start MiB");
    let out = root.join("shards");
    for &mb in &sizes {
        let total = mb << 20;
        for format in ["jsonl", "parquet", "text"] {
            let corpus = root.join(format!("corpus-{format}"));
            match format {
                "jsonl" => write_jsonl(&corpus, total),
                "parquet" => write_parquet(&corpus, total),
                _ => write_text_dir(&corpus, total),
            }
            let r = run_child(&[format, "byte", corpus.to_str().unwrap(), out.to_str().unwrap()]);
            let (tokens, seconds) = (r["tokens"].as_f64().unwrap(), r["seconds"].as_f64().unwrap());
            println!(
                "{:>5} MB {format:>6} {tokens:>14} {seconds:>10.1} {:>12.0} {:>14.1} {:>16.1}",
                mb,
                tokens / seconds,
                mib(&r["vmhwm_kib"]),
                mib(&r["idle_vmhwm_kib"])
            );
            let _ = std::fs::remove_dir_all(&corpus);
            let _ = std::fs::remove_file(&corpus);
        }
        let r = run_child(&["open", out.to_str().unwrap()]);
        println!(
            "{:>5} MB shards opened for training ({} tokens, every one read for the fingerprint) in {:.1} s, VmHWM {:.1} MiB; after 1,000 batches of 8 × 1,024: anonymous memory {:.1} MiB (at start {:.1}), VmHWM {:.1} MiB (the shards are read where they lie; what was read stays in the page cache, not in the trainer)",
            mb,
            r["tokens"],
            r["open_seconds"].as_f64().unwrap(),
            mib(&r["open_vmhwm_kib"]),
            mib(&r["rss_anon_kib"]),
            mib(&r["idle_rss_anon_kib"]),
            mib(&r["vmhwm_kib"])
        );
        let _ = std::fs::remove_dir_all(&out);
    }
    let corpus = root.join("corpus-bpe.jsonl");
    write_jsonl(&corpus, bpe_mb << 20);
    let trained = root.join("bpe-tokenizer.json");
    for (what, tokenizer) in [
        ("trained on the corpus, then encoding it", "bpe"),
        ("the trained tokenizer.json as a tokenizer file, encoding only", trained.to_str().unwrap()),
    ] {
        let r = run_child(&["jsonl", tokenizer, corpus.to_str().unwrap(), out.to_str().unwrap()]);
        let (tokens, seconds) = (r["tokens"].as_f64().unwrap(), r["seconds"].as_f64().unwrap());
        println!(
            "BPE of 8,192 tokens, {what}: {bpe_mb} MB JSONL, {tokens} tokens ({:.2} bytes a token) in {seconds:.1} s, {:.0} tokens/s, {:.2} MB of text/s, VmHWM {:.1} MiB",
            r["bytes"].as_f64().unwrap() / tokens,
            tokens / seconds,
            r["bytes"].as_f64().unwrap() / seconds / 1e6,
            mib(&r["vmhwm_kib"])
        );
        let _ = std::fs::copy(out.join("tokenizer.json"), &trained);
    }
    let _ = std::fs::remove_dir_all(&root);
}
