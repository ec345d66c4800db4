//! The model, as the papers describe it: attention (causal, sliding-window, block-sparse; rotary
//! or learned positions), the dense MLP, the mixture-of-experts feed-forward, the pre-norm block
//! and the GPT around them. A pipeline stage is a slice of the same GPT (see `gpt.rs`).

pub mod attention;
pub mod block;
pub mod gpt;
pub mod mlp;
pub mod moe;
pub mod soft;
