use super::*;
use crate::config::{AttentionPattern, MoeConfig, Positions, nano_model};
use crate::model::gpt::Gpt;
use crate::model::gpt::whole_model;
use tch::Device;

fn model(positions: Positions, bias: bool, tied: bool) -> ModelConfig {
    let mut m = nano_model(300);
    (m.layers, m.d_model, m.heads, m.seq_len, m.ffn_hidden) = (2, 32, 4, 24, 48);
    (m.positions, m.bias, m.tied_embeddings) = (positions, bias, tied);
    m
}

/// The whole model with every weight random (norm gains and biases too, so a misplaced one shows).
fn random(m: &ModelConfig, seed: i64) -> (Gpt, ParamStore) {
    let (gpt, mut store) = whole_model(m, Device::Cpu);
    tch::manual_seed(seed);
    tch::no_grad(|| {
        for i in 0..store.specs.len() {
            let mut view = store.master_view(i);
            view.copy_(&(Tensor::randn(view.size(), (Kind::Float, Device::Cpu)) * 0.2));
        }
    });
    store.sync_compute();
    (gpt, store)
}

fn logits(gpt: &Gpt, store: &ParamStore, tokens: &Tensor) -> Tensor {
    gpt.eval_slice(store, tokens)
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("frugal-hf-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn every_dense_model_round_trips_to_the_same_logits() {
    let tokens = Tensor::randint(300, [2, 24], (Kind::Int64, Device::Cpu));
    for positions in [Positions::Learned, Positions::Rotary] {
        for (bias, tied) in [(true, true), (false, false), (true, false), (false, true)] {
            let m = model(positions, bias, tied);
            let (gpt, store) = random(&m, 3);
            let out = dir("round-trip");
            let exported = export(&out, &m, &store, None, DEFAULT_MAX_SHARD_BYTES).unwrap();
            assert_eq!(exported.family, Family::of(&m).unwrap());
            assert_eq!(exported.weight_files, [WEIGHTS_FILE]);
            let imported = import(&out, None).unwrap();
            assert_eq!(imported.family, exported.family);
            // biases absent in frugal's model come back as zero ones: the same computation
            let expected = ModelConfig { bias: true, ..m.clone() };
            assert_eq!(imported.model, expected, "{positions:?} bias {bias} tied {tied}");
            let (gpt2, mut store2) = whole_model(&imported.model, Device::Cpu);
            imported.load_into(&mut store2).unwrap();
            let diff = (logits(&gpt, &store, &tokens) - logits(&gpt2, &store2, &tokens)).abs().max().double_value(&[]);
            assert!(diff == 0.0, "{positions:?} bias {bias} tied {tied}: logits differ by {diff}");
            std::fs::remove_dir_all(&out).unwrap();
        }
    }
}

#[test]
fn weights_past_the_shard_size_are_sharded_with_an_index() {
    let m = model(Positions::Rotary, true, false);
    let (_, store) = random(&m, 4);
    let out = dir("sharded");
    let exported = export(&out, &m, &store, Some(&TextTokenizer::Byte), 40_000).unwrap();
    assert!(exported.weight_files.len() > 2, "{:?}", exported.weight_files);
    assert_eq!(exported.weight_files[0], format!("model-00001-of-{:05}.safetensors", exported.weight_files.len()));
    let index: Value = serde_json::from_str(&std::fs::read_to_string(out.join(INDEX_FILE)).unwrap()).unwrap();
    assert_eq!(index["metadata"]["total_size"].as_u64(), Some(exported.weight_bytes));
    assert_eq!(exported.weight_bytes, store.numel as u64 * 4, "fp32, and no bias added to a model that has them");
    let imported = import(&out, None).unwrap();
    for (name, t) in named_weights(&store) {
        assert!(imported.tensor(&name).unwrap().equal(&t), "{name}");
    }
    for file in [CONFIG_FILE, GENERATION_CONFIG_FILE, TOKENIZER_FILE, TOKENIZER_CONFIG_FILE] {
        assert!(out.join(file).exists(), "{file}");
    }
    let config: Value = serde_json::from_str(&std::fs::read_to_string(out.join(CONFIG_FILE)).unwrap()).unwrap();
    assert_eq!((config["eos_token_id"].as_i64(), config["architectures"][0].as_str()), (Some(256), Some("GPTNeoXForCausalLM")));
    // exporting again replaces the export; a directory that is not one is left alone
    export(&out, &m, &store, None, DEFAULT_MAX_SHARD_BYTES).unwrap();
    assert!(!out.join(INDEX_FILE).exists() && !out.join(TOKENIZER_FILE).exists());
    let other = dir("not-an-export");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "mine").unwrap();
    let e = export(&other, &m, &store, None, DEFAULT_MAX_SHARD_BYTES).unwrap_err().to_string();
    assert!(e.contains("is not a Hugging Face export"), "{e}");
    assert!(other.join("notes.txt").exists());
    for d in [out, other] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn a_model_no_family_computes_is_refused_naming_the_field() {
    let mut m = model(Positions::Rotary, false, true);
    m.attention = AttentionPattern::SlidingWindow { window: 8 };
    let e = Family::of(&m).unwrap_err();
    assert_eq!(e.field, "model.sparsity.attention");
    assert!(e.to_string().starts_with("spec.model.sparsity.attention: "), "{e}");
}

#[test]
fn a_config_frugal_would_compute_otherwise_is_refused_naming_its_key() {
    let m = model(Positions::Learned, true, true);
    let mut c = Family::Gpt2.config(&m, None);
    assert_eq!(Family::from_config(&c).unwrap(), (Family::Gpt2, m.clone()));
    c["activation_function"] = json!("gelu_new");
    assert!(Family::from_config(&c).unwrap_err().to_string().contains("activation_function"));
    let n = model(Positions::Rotary, true, false);
    let mut c = Family::GptNeox.config(&n, None);
    assert_eq!(Family::from_config(&c).unwrap(), (Family::GptNeox, n));
    c["use_parallel_residual"] = json!(true);
    assert!(Family::from_config(&c).unwrap_err().to_string().contains("use_parallel_residual"));
    let c = json!({"model_type": "bert"});
    assert!(Family::from_config(&c).unwrap_err().to_string().contains("\"bert\""));
}

#[test]
fn a_truncated_or_half_precision_weight_file_is_detected_or_converted() {
    let m = model(Positions::Learned, true, true);
    let (gpt, store) = random(&m, 6);
    let out = dir("truncated");
    export(&out, &m, &store, None, DEFAULT_MAX_SHARD_BYTES).unwrap();
    let file = out.join(WEIGHTS_FILE);
    let bytes = std::fs::read(&file).unwrap();
    // bf16 weights, as many models are saved, read as fp32
    let bf16: Vec<(String, Tensor)> = Tensor::read_safetensors(&file).unwrap().into_iter().map(|(n, t)| (n, t.to_kind(Kind::BFloat16))).collect();
    Tensor::write_safetensors(&bf16, &file).unwrap();
    let imported = import(&out, None).unwrap();
    let (gpt2, mut store2) = whole_model(&imported.model, Device::Cpu);
    imported.load_into(&mut store2).unwrap();
    let tokens = Tensor::randint(300, [1, 24], (Kind::Int64, Device::Cpu));
    let diff = (logits(&gpt, &store, &tokens) - logits(&gpt2, &store2, &tokens)).abs().max().double_value(&[]);
    assert!(diff > 0.0 && diff < 0.5, "bf16 weights give logits {diff} away");
    // a file cut short is refused when opened, before anything is loaded
    std::fs::write(&file, &bytes[..bytes.len() - 100]).unwrap();
    let e = import(&out, None).err().expect("a truncated file").to_string();
    assert!(e.contains("runs past the end of the file"), "{e}");
    std::fs::remove_dir_all(&out).unwrap();
}

/// Llama's block, and with it mixture-of-experts layers whose gates are renormalised.
fn llama(bias: bool, tied: bool, moe: Option<(i64, i64)>) -> ModelConfig {
    let mut m = model(Positions::Rotary, bias, tied);
    (m.norm, m.feed_forward) = (crate::config::Norm::RmsNorm, crate::config::FeedForward::Swiglu);
    m.moe = moe.map(|(shared, every)| MoeConfig {
        experts: 4,
        top_k: 2,
        shared_experts: shared,
        expert_hidden: 16,
        every_n_layers: every,
        capacity_factor: 1.25,
        load_balance_weight: 0.01,
        normalize_top_k: true,
    });
    m
}

#[test]
fn llama_block_models_round_trip_as_llama_and_ernie_moe() {
    let tokens = Tensor::randint(300, [2, 24], (Kind::Int64, Device::Cpu));
    let cases = [
        (llama(false, true, None), Family::Llama),
        (llama(true, false, None), Family::Llama),
        (llama(false, true, Some((1, 1))), Family::Ernie45Moe),
        (llama(false, false, Some((2, 2))), Family::Ernie45Moe),
        (llama(false, false, Some((0, 1))), Family::Ernie45Moe),
    ];
    for (m, family) in cases {
        let (gpt, store) = random(&m, 8);
        let out = dir("llama");
        assert_eq!(export(&out, &m, &store, None, DEFAULT_MAX_SHARD_BYTES).unwrap().family, family);
        let imported = import(&out, None).unwrap();
        let mut want = m.clone();
        if let Some(moe) = want.moe.as_mut() {
            // capacity and the balance loss are training's, not the model's: the job's spec sets them
            (moe.capacity_factor, moe.load_balance_weight) = (1.25, 0.01);
        }
        assert_eq!(imported.model, want, "{family:?}");
        let (gpt2, mut store2) = whole_model(&imported.model, Device::Cpu);
        imported.load_into(&mut store2).unwrap();
        for (name, t) in named_weights(&store) {
            let back = imported.tensor(&name).unwrap();
            // a shared experts' summed down bias comes back on the first of them
            if name.ends_with("shared.b_out") {
                assert!(
                    back.sum_dim_intlist([0i64].as_slice(), false, Kind::Float).allclose(
                        &t.sum_dim_intlist([0i64].as_slice(), false, Kind::Float),
                        1e-6,
                        1e-6,
                        false
                    ),
                    "{name}"
                );
            } else {
                assert!(back.equal(&t), "{family:?}: {name} differs after the round trip");
            }
        }
        let diff = (logits(&gpt, &store, &tokens) - logits(&gpt2, &store2, &tokens)).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "{family:?}: logits differ by {diff}");
        std::fs::remove_dir_all(&out).unwrap();
    }
}

#[test]
fn moe_and_mixed_blocks_are_refused_naming_the_field() {
    let mut raw = llama(false, true, Some((1, 1)));
    raw.moe.as_mut().unwrap().normalize_top_k = false;
    assert_eq!(Family::of(&raw).unwrap_err().field, "model.sparsity.moe.normalizeTopK");
    let mut gelu = model(Positions::Rotary, false, true);
    gelu.moe = llama(false, true, Some((1, 1))).moe;
    assert_eq!(Family::of(&gelu).unwrap_err().field, "model.custom.feedForward");
    let mut mixed = llama(false, true, None);
    mixed.feed_forward = crate::config::FeedForward::Gelu;
    assert_eq!(Family::of(&mixed).unwrap_err().field, "model.custom.norm");
    assert_eq!(Family::of(&llama(true, true, Some((1, 1)))).unwrap_err().field, "model.custom.bias");
    let mut learned = llama(false, true, None);
    learned.positions = Positions::Learned;
    assert_eq!(Family::of(&learned).unwrap_err().field, "model.custom.positions");
}
