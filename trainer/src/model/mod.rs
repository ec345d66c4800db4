//! The model, as the papers describe it: attention (causal, sliding-window, block-sparse; rotary
//! or learned positions), the dense MLP, the mixture-of-experts feed-forward, the pre-norm block
//! and the GPT around them. A pipeline stage is a slice of the same GPT (see `gpt.rs`).

pub mod attention;
pub mod block;
pub mod gpt;
pub mod mlp;
pub mod moe;
pub mod soft;

/// Checks autograd's gradient of `loss` (a scalar, fp64) with respect to every element of
/// `leaves` against central finite differences, moving one element at a time.
#[cfg(test)]
pub(crate) fn assert_gradients_match_finite_differences(loss: impl Fn() -> tch::Tensor, leaves: &[&tch::Tensor]) {
    let grads = tch::Tensor::run_backward(&[loss()], leaves, false, false);
    let h = 1e-6;
    for (l, (leaf, grad)) in leaves.iter().zip(&grads).enumerate() {
        let (flat, grad) = (leaf.view([-1]), grad.view([-1]));
        for i in 0..flat.size()[0] {
            let at = |delta: f64| {
                tch::no_grad(|| {
                    let _ = flat.get(i).f_add_scalar_(delta).expect("an element moved");
                });
                loss().double_value(&[])
            };
            let numeric = (at(h) - at(-2.0 * h)) / (2.0 * h);
            at(h);
            let analytic = grad.double_value(&[i]);
            assert!(
                (numeric - analytic).abs() < 1e-6 * analytic.abs().max(1.0),
                "leaf {l}, element {i}: autograd {analytic}, finite differences {numeric}"
            );
        }
    }
}
