//! Corpora as datasets ship them and tokenizers that come with a model: the same documents as
//! text files, JSONL or Parquet (written by pyarrow) give the same tokens; a tokenizer.json
//! trained by Python's `tokenizers` gives Python's ids, and a model directory saved by
//! `transformers` gives its tokenizer; ids past 65,535 go through shards and batches; bad input
//! names the file, the line or row and the field.

mod common;

use common::temp_dir;
use frugal_trainer::config::{DataConfig, DataSource};
use frugal_trainer::data::{Corpus, Data, TextTokenizer, TokenizerSource, prepare, tokenize};
use std::path::{Path, PathBuf};

const SHAKESPEARE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/tinyshakespeare.txt");

/// Paragraphs of Tiny Shakespeare, and documents that test the edges: empty, non-ASCII, quotes,
/// backslashes, carriage returns.
fn documents() -> Vec<String> {
    let text = std::fs::read_to_string(SHAKESPEARE).expect("data/tinyshakespeare.txt");
    let mut docs: Vec<String> = text[..40_000].split("\n\n").map(|p| format!("{p}\n")).collect();
    docs.insert(3, String::new());
    docs.insert(7, "unicode: café, naïve, 漢字, 🦀\ttab\n".into());
    docs.insert(11, "a \"quoted\" word, a back\\slash\r\nand a CRLF line\r\n".into());
    docs
}

/// The interpreter of the project's virtual environment, which has pyarrow and tokenizers.
fn python() -> PathBuf {
    std::env::var_os("FRUGAL_VENV").map_or_else(|| PathBuf::from("python3"), |v| PathBuf::from(v).join("bin/python"))
}

fn run_python(script: &str, args: &[&Path]) {
    let out = std::process::Command::new(python()).arg("-c").arg(script).args(args).output().expect("python runs");
    assert!(
        out.status.success(),
        "python failed (it needs pyarrow and tokenizers: `source scripts/env.sh && frugal_setup_interop`):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The documents as a directory of text files, as JSONL (two files, blank lines, other keys) and
/// as Parquet written by pyarrow (two files, small row groups and pages, snappy and zstd, a
/// dictionary-encoded column named `content`).
fn formats(dir: &Path, docs: &[String]) -> [Corpus; 3] {
    let text = dir.join("text");
    std::fs::create_dir_all(&text).unwrap();
    for (i, d) in docs.iter().enumerate() {
        std::fs::write(text.join(format!("{i:05}.txt")), d).unwrap();
    }
    let jsonl = dir.join("jsonl");
    std::fs::create_dir_all(&jsonl).unwrap();
    let half = docs.len() / 2;
    for (name, part) in [("a.jsonl", &docs[..half]), ("b.jsonl", &docs[half..])] {
        let mut lines = String::new();
        for (i, d) in part.iter().enumerate() {
            let record = serde_json::json!({"id": i, "meta": {"text": "not the document"}, "text": d});
            lines.push_str(&format!("{record}\n"));
            if i % 10 == 4 {
                lines.push_str("\n   \n");
            }
        }
        std::fs::write(jsonl.join(name), lines).unwrap();
    }
    let parquet = dir.join("parquet");
    std::fs::create_dir_all(&parquet).unwrap();
    let docs_json = dir.join("docs.json");
    std::fs::write(&docs_json, serde_json::to_string(docs).unwrap()).unwrap();
    run_python(
        r#"
import json, sys
import pyarrow as pa, pyarrow.parquet as pq
docs = json.load(open(sys.argv[1]))
out = sys.argv[2]
half = len(docs) // 2
for name, part, codec, rows in [("part-0.parquet", docs[:half], "snappy", 16), ("part-1.parquet", docs[half:], "zstd", 50)]:
    table = pa.table({"id": pa.array(range(len(part)), pa.int64()), "content": pa.array(part, pa.string())})
    pq.write_table(table, out + "/" + name, compression=codec, row_group_size=rows, data_page_size=1024, use_dictionary=["content"])
"#,
        &[&docs_json, &parquet],
    );
    [Corpus::text(text), Corpus::jsonl(jsonl, "text"), Corpus::parquet(parquet, "content")]
}

fn data(corpus: &Corpus, tokenizer: TokenizerSource, vocab: i64) -> Data {
    let cfg = DataConfig { source: DataSource::Text { corpus: corpus.clone(), tokenizer }, validation_fraction: 0.1, eval_sequences: 0 };
    Data::new(&cfg, vocab, 32, 7).unwrap_or_else(|e| panic!("{}: {e:#}", corpus.path.display()))
}

#[test]
fn jsonl_and_parquet_give_the_tokens_of_the_same_documents_as_text_files() {
    let dir = temp_dir("formats");
    let docs = documents();
    let [text, jsonl, parquet] = formats(&dir, &docs);
    for tokenizer in [TokenizerSource::Byte, TokenizerSource::Bpe] {
        let from_text = data(&text, tokenizer.clone(), 320);
        // Each document closed by end-of-text: the held-out ones at the end.
        let tok = from_text.tokenizer.clone().unwrap();
        let eot = tok.end_of_text();
        let closed = |d: &Data| d.training_tokens().to_vec().iter().chain(&d.validation_tokens().to_vec()).filter(|&&t| t == eot).count();
        assert_eq!(closed(&from_text), docs.len());
        let all: Vec<u8> = docs.concat().into_bytes();
        let decoded = [tok.decode(&from_text.training_tokens().to_vec()), tok.decode(&from_text.validation_tokens().to_vec())].concat();
        assert_eq!(decoded, all);
        for other in [&jsonl, &parquet] {
            let mut d = data(other, tokenizer.clone(), 320);
            assert_eq!(d.training_tokens(), from_text.training_tokens(), "{tokenizer:?} {:?}", other.format);
            assert_eq!(d.validation_tokens(), from_text.validation_tokens(), "{tokenizer:?} {:?}", other.format);
            assert_eq!(d.fingerprint, from_text.fingerprint);
            assert!(d.next_batch(4).inputs.equal(&data(&text, tokenizer.clone(), 320).next_batch(4).inputs));
        }
    }
    // prepare writes the same shards from each.
    let mut fingerprints = vec![];
    for (i, corpus) in [&text, &jsonl, &parquet].into_iter().enumerate() {
        let out = dir.join(format!("shards-{i}"));
        let p = prepare(corpus, &TokenizerSource::Bpe, 320, 0.1, &out, 5_000).unwrap();
        assert_eq!(p.documents, docs.len() as u64);
        let shards: Vec<Vec<u8>> = p.files.iter().map(|f| std::fs::read(f).unwrap()).collect();
        fingerprints.push((p.meta.data_fingerprint, shards));
    }
    assert!(fingerprints[0].1.len() > 2, "the corpus spans several shards");
    assert!(fingerprints.iter().all(|f| *f == fingerprints[0]));
    let from_shards =
        Data::new(&DataConfig { source: DataSource::Shards { path: dir.join("shards-2") }, validation_fraction: 0.1, eval_sequences: 0 }, 320, 32, 7)
            .unwrap();
    assert_eq!(from_shards.fingerprint, data(&text, TokenizerSource::Bpe, 320).fingerprint);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_tokenizer_trained_in_python_is_used_as_it_is() {
    let dir = temp_dir("python-tokenizer");
    let docs = documents();
    let [text, ..] = formats(&dir, &docs);
    let docs_json = dir.join("docs.json");
    run_python(
        r#"
import json, os, sys
from tokenizers import Tokenizer, SentencePieceBPETokenizer, decoders, models, pre_tokenizers, trainers
docs = json.load(open(sys.argv[1]))
out = sys.argv[2]
for d in ("bytelevel", "sentencepiece"):
    os.makedirs(os.path.join(out, d), exist_ok=True)
# GPT-2's kind: byte-level BPE, end-of-text the first special token (id 0)
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
tok.train_from_iterator(docs, trainer)
tok.save(os.path.join(out, "bytelevel", "tokenizer.json"))
# SentencePiece's kind: NFKC, Metaspace, end-of-text </s>
sp = SentencePieceBPETokenizer()
sp.train_from_iterator(docs, vocab_size=400, special_tokens=["<unk>", "</s>"], show_progress=False)
sp.save(os.path.join(out, "sentencepiece", "tokenizer.json"))
# A model directory as transformers saves one: tokenizer.json and tokenizer_config.json, whose
# eos_token is a special token of its own
from transformers import PreTrainedTokenizerFast
fast = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tok.to_str()), eos_token="<|end|>")
fast.save_pretrained(os.path.join(out, "model"))
ids = {
    "model_eot": fast.convert_tokens_to_ids("<|end|>"),
    "bytelevel": [tok.encode(d, add_special_tokens=False).ids for d in docs],
    "sentencepiece": [sp.encode(d, add_special_tokens=False).ids for d in docs],
    "eot": [tok.token_to_id("<|endoftext|>"), sp.token_to_id("</s>")],
}
json.dump(ids, open(os.path.join(out, "ids.json"), "w"))
"#,
        &[&docs_json, &dir],
    );
    let python: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("ids.json")).unwrap()).unwrap();
    let ids_of = |kind: &str| -> Vec<Vec<u32>> { serde_json::from_value(python[kind].clone()).unwrap() };
    for (i, kind) in ["bytelevel", "sentencepiece"].into_iter().enumerate() {
        let path = dir.join(kind).join("tokenizer.json");
        let tok = TextTokenizer::from_file(&path, None).unwrap();
        assert_eq!(i64::from(tok.end_of_text()), python["eot"][i].as_i64().unwrap(), "{kind}");
        let expected = ids_of(kind);
        for (d, want) in docs.iter().zip(&expected) {
            assert_eq!(&tok.encode(d.as_bytes()).unwrap(), want, "{kind}: {d:?}");
        }
        // Training reads the documents through it as they are, each closed by its end-of-text.
        let source = TokenizerSource::File { path: path.clone(), end_of_text: None };
        let d = data(&text, source.clone(), tok.vocab_size());
        let stream: Vec<u32> = expected.iter().flat_map(|ids| ids.iter().copied().chain([tok.end_of_text()])).collect();
        assert_eq!([d.training_tokens().to_vec(), d.validation_tokens().to_vec()].concat(), stream, "{kind}");
        // Never retrained: the tokenizer is the file's.
        assert_eq!(d.tokenizer_fingerprint, tok.fingerprint());
        // A model narrower than the tokenizer is refused, naming both sizes.
        let cfg = DataConfig { source: DataSource::Text { corpus: text.clone(), tokenizer: source }, validation_fraction: 0.1, eval_sequences: 0 };
        let e = format!("{:#}", Data::new(&cfg, 300, 32, 7).err().unwrap());
        assert!(e.contains(&format!("{} tokens", tok.vocab_size())) && e.contains("holds 300") && e.contains("model.custom.vocabSize"), "{e}");
    }
    // The tokenizer a Hugging Face model directory comes with ends documents with its eos_token.
    let model = TextTokenizer::from_model_dir(&dir.join("model")).unwrap();
    assert_eq!(i64::from(model.end_of_text()), python["model_eot"].as_i64().unwrap());
    assert_eq!(model.end_of_text_text(), "<|end|>");
    assert_eq!(model.encode(docs[0].as_bytes()).unwrap(), ids_of("bytelevel")[0]);

    // A byte-level tokenizer's tokens cover the text's bytes exactly, so bits per byte counts
    // the text's bytes.
    let tok = TextTokenizer::from_file(&dir.join("bytelevel/tokenizer.json"), None).unwrap();
    let table = tok.token_bytes();
    for (d, ids) in docs.iter().zip(ids_of("bytelevel")) {
        assert_eq!(ids.iter().map(|&t| table[t as usize].len()).sum::<usize>(), d.len(), "{d:?}");
        assert_eq!(tok.decode(&ids), d.as_bytes());
    }
    // A SentencePiece tokenizer's tokens stand for their text with the space `▁` marks, the
    // first one of a text included: one byte more than an ASCII document holds.
    let tok = TextTokenizer::from_file(&dir.join("sentencepiece/tokenizer.json"), None).unwrap();
    let table = tok.token_bytes();
    let mut checked = 0;
    for (d, ids) in docs.iter().zip(ids_of("sentencepiece")) {
        if d.is_ascii() && !d.is_empty() && !d.starts_with(char::is_whitespace) && !d.contains(['\t', '\r']) {
            assert_eq!(ids.iter().map(|&t| table[t as usize].len()).sum::<usize>(), d.len() + 1, "{d:?}");
            checked += 1;
        }
    }
    assert!(checked > 50, "{checked} documents checked");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A word-level tokenizer of 70,000 words and an end-of-text, written as tokenizer.json.
fn big_vocabulary(path: &Path) {
    use tokenizers::models::wordlevel::WordLevel;
    use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
    use tokenizers::{AddedToken, Tokenizer};
    let vocab = (0..70_000u32).map(|i| (format!("w{i}"), i)).chain([("[UNK]".to_string(), 70_000)]).collect();
    let model = WordLevel::builder().vocab(vocab).unk_token("[UNK]".into()).build().unwrap();
    let mut t = Tokenizer::new(model);
    t.with_pre_tokenizer(Some(WhitespaceSplit));
    t.add_special_tokens(&[AddedToken::from("</s>", true)]);
    t.save(path, false).unwrap();
}

#[test]
fn ids_past_65535_go_through_prepare_shards_and_batches() {
    let dir = temp_dir("wide-ids");
    let tokenizer = dir.join("tokenizer.json");
    big_vocabulary(&tokenizer);
    let mut lines = String::new();
    for doc in 0..200u32 {
        let words: Vec<String> = (0..40u32).map(|i| format!("w{}", (doc * 7919 + i * 104_729) % 70_000)).collect();
        lines.push_str(&format!("{}\n", serde_json::json!({"text": words.join(" ")})));
    }
    std::fs::write(dir.join("corpus.jsonl"), lines).unwrap();
    let corpus = Corpus::jsonl(dir.join("corpus.jsonl"), "text");
    let source = TokenizerSource::File { path: tokenizer.clone(), end_of_text: None };
    let (train, val, tok) = tokenize(&corpus, &source, 70_002, 0.1).unwrap();
    assert_eq!((tok.vocab_size(), tok.end_of_text()), (70_002, 70_001));
    assert!(train.max().unwrap() > 65_535 && val.max().unwrap() > 65_535);
    assert_eq!(tok.encode(b"w65536 w69999 w3").unwrap(), vec![65_536, 69_999, 3]);

    let out = dir.join("shards");
    let p = prepare(&corpus, &source, 70_002, 0.1, &out, 1_000).unwrap();
    assert_eq!(p.meta.bytes_per_token, 4);
    assert_eq!(p.meta.end_of_text.as_deref(), Some("</s>"));
    // Version 2 of the header: uint32 tokens.
    let first = std::fs::read(&p.files[0]).unwrap();
    assert_eq!(&first[..12], [20240520i32.to_le_bytes(), 2i32.to_le_bytes(), 1000i32.to_le_bytes()].concat());
    let shards = DataConfig { source: DataSource::Shards { path: out }, validation_fraction: 0.1, eval_sequences: 0 };
    let mut from_shards = Data::new(&shards, 70_002, 32, 3).unwrap();
    let cfg = DataConfig { source: DataSource::Text { corpus, tokenizer: source }, ..shards.clone() };
    let mut from_jsonl = Data::new(&cfg, 70_002, 32, 3).unwrap();
    assert_eq!(from_shards.training_tokens(), &train);
    assert_eq!(from_shards.validation_tokens(), &val);
    assert_eq!(from_shards.fingerprint, from_jsonl.fingerprint);
    assert_eq!(from_shards.fingerprint, p.meta.data_fingerprint);
    let (a, b) = (from_shards.next_batch(16), from_jsonl.next_batch(16));
    assert!(a.inputs.equal(&b.inputs) && a.targets.equal(&b.targets));
    assert!(a.inputs.max().int64_value(&[]) > 65_535, "batches carry the wide ids");
    let v = from_shards.validation(4);
    assert!(v.iter().any(|b| b.targets.max().int64_value(&[]) > 65_535));
    // A model narrower than the shards' tokenizer is refused.
    let e = format!("{:#}", Data::new(&shards, 65_536, 32, 3).err().unwrap());
    assert!(e.contains("70002 tokens") && e.contains("holds 65536"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn error(corpus: &Corpus, tokenizer: TokenizerSource) -> String {
    format!("{:#}", tokenize(corpus, &tokenizer, 300, 0.1).err().unwrap_or_else(|| panic!("{} was accepted", corpus.path.display())))
}

#[test]
fn bad_corpora_name_the_file_the_line_or_row_and_the_field() {
    let dir = temp_dir("bad-corpora");
    let jsonl = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        Corpus::jsonl(p, "text")
    };
    let e = error(&jsonl("not-json.jsonl", "{\"text\": \"a\"}\n\n{\"text\": \"b\"\n"), TokenizerSource::Byte);
    assert!(e.contains("not-json.jsonl line 3") && e.contains("not JSON"), "{e}");
    let e = error(&jsonl("missing.jsonl", "{\"text\": \"a\"}\n{\"body\": \"b\"}\n"), TokenizerSource::Byte);
    assert!(e.contains("missing.jsonl line 2") && e.contains("no field \"text\"") && e.contains("data.source.text.field"), "{e}");
    let e = error(&jsonl("number.jsonl", "{\"text\": 12}\n"), TokenizerSource::Byte);
    assert!(e.contains("number.jsonl line 1") && e.contains("field \"text\" is a number, not a string"), "{e}");
    std::fs::write(dir.join("latin1.jsonl"), b"{\"text\": \"ok\"}\n{\"text\": \"caf\xe9\"}\n").unwrap();
    let e = error(&Corpus::jsonl(dir.join("latin1.jsonl"), "text"), TokenizerSource::Byte);
    assert!(e.contains("latin1.jsonl line 2") && e.contains("not JSON"), "{e}");
    let e = error(&Corpus::jsonl(dir.join("absent.jsonl"), "text"), TokenizerSource::Byte);
    assert!(e.contains("absent.jsonl") && e.contains("No such file"), "{e}");

    // A text document that is not UTF-8 for a tokenizer that reads UTF-8.
    std::fs::create_dir_all(dir.join("txt")).unwrap();
    std::fs::write(dir.join("txt/0.txt"), "fine text\n".repeat(50)).unwrap();
    std::fs::write(dir.join("txt/1.txt"), b"caf\xe9\n").unwrap();
    let e = error(&Corpus::text(dir.join("txt")), TokenizerSource::Bpe);
    assert!(e.contains("1.txt") && e.contains("not UTF-8") && e.contains("data.tokenizer: byte"), "{e}");

    // Parquet files pyarrow writes wrong for a corpus.
    let parquet = dir.join("parquet");
    std::fs::create_dir_all(&parquet).unwrap();
    run_python(
        r#"
import sys
import pyarrow as pa, pyarrow.parquet as pq
out = sys.argv[1]
pq.write_table(pa.table({"content": ["a", "b"], "n": [1, 2]}), out + "/no-text.parquet")
pq.write_table(pa.table({"text": [1, 2]}), out + "/ints.parquet")
pq.write_table(pa.table({"text": pa.array(["a", "b", None, "d"], pa.string())}), out + "/nulls.parquet", row_group_size=2)
pq.write_table(pa.table({"text": [["a", "b"], ["c"]]}), out + "/lists.parquet")
pq.write_table(pa.table({"text": ["a", "b"]}), out + "/gzip.parquet", compression="gzip")
open(out + "/garbage.parquet", "w").write("not parquet at all")
"#,
        &[&parquet],
    );
    let pq = |name: &str| Corpus::parquet(parquet.join(name), "text");
    let e = error(&pq("no-text.parquet"), TokenizerSource::Byte);
    assert!(
        e.contains("no-text.parquet") && e.contains("no column \"text\" (its columns: content, n)") && e.contains("data.source.text.field"),
        "{e}"
    );
    let e = error(&pq("ints.parquet"), TokenizerSource::Byte);
    assert!(e.contains("ints.parquet") && e.contains("column \"text\" holds") && e.contains("not strings"), "{e}");
    let e = error(&pq("nulls.parquet"), TokenizerSource::Byte);
    assert!(e.contains("nulls.parquet row 3") && e.contains("column \"text\" is null"), "{e}");
    let e = error(&pq("lists.parquet"), TokenizerSource::Byte);
    assert!(e.contains("lists.parquet") && e.contains("column \"text\" is a list or a struct (text.list.element)"), "{e}");
    let e = error(&pq("gzip.parquet"), TokenizerSource::Byte);
    assert!(e.contains("gzip.parquet") && e.contains("compressed with GZIP") && e.contains("snappy"), "{e}");
    let e = error(&pq("garbage.parquet"), TokenizerSource::Byte);
    assert!(e.contains("garbage.parquet") && e.contains("not a Parquet file"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
