//! Mixture-of-experts feed-forward (Switch/GShard routing, DeepSeekMoE experts).
//!
//! A learned router picks the top-k of E fine-grained experts per token; shared experts see every
//! token. A token's k gates are the router's softmax probabilities of its experts, or with
//! `normalizeTopK` those divided by their sum. Dispatch is bucketed: assignments are sorted by
//! expert, each expert gets a bucket of `capacity` slots, and all experts run as two batched
//! matrix products over [E, capacity, ·]; the outputs go back to their tokens by one row copy
//! and one batched product with the gates. The op count does not grow with E. In training,
//! tokens past the capacity factor's slots are dropped (and counted); evaluation gives every
//! expert the slots its load needs and drops nothing ([`Capacity`]). The router runs in fp32.

use crate::config::{FeedForward, ModelConfig, MoeConfig};
use crate::model::mlp::activate;
use crate::params::{Init, ParamBuilder, ParamGroup, ParamId, ParamStore};
use tch::{Kind, Tensor};

/// The routing decision for one MoE layer and batch: which experts each token goes to. Kept by
/// activation recomputation so the recomputed forward dispatches exactly as the first one did.
#[derive(Debug, Clone)]
pub struct Routing {
    /// The k chosen experts of each token, token after token ([N · k], on the host).
    pub experts: Vec<i64>,
}

/// How many token slots an MoE layer gives each expert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capacity {
    /// Training: the capacity factor's share, ceil(factor · N·k / E); assignments past it are
    /// dropped (and counted). A fixed bound keeps a step's work and memory bounded whatever the
    /// router does.
    Factor,
    /// Evaluation: the fullest expert's load, so nothing is dropped, and the figures are those a
    /// dropless inference engine computes for the same weights.
    Dropless,
}

/// What one MoE layer reports besides its output.
pub struct MoeOutput {
    pub y: Tensor,
    /// Load-balancing loss E · Σ_e f_e · P_e (1.0 when perfectly balanced).
    pub aux_loss: Tensor,
    /// Token-expert assignments dropped for lack of capacity (a 0-d i64 tensor on the host).
    pub dropped: Tensor,
    pub assignments: i64,
    pub routing: Routing,
    /// With a given routing: token-expert choices where the router now disagrees with it (a
    /// 0-d i64 tensor; always 0 when recomputation is exact).
    pub routing_mismatches: Option<Tensor>,
}

/// A bank of equally shaped experts (GELU MLPs or SwiGLUs, as the model's feed-forward) run as
/// batched matmuls: input [X, C, D] (C token slots per expert) → [X, C, D]. A SwiGLU expert's
/// gate and up projections are one matrix, the gate in columns 0..H of `w_in` and the up
/// projection in columns H..2H.
pub struct ExpertBank {
    /// [X, D, H], or for SwiGLU [X, D, 2H]
    w_in: ParamId,
    /// [X, H], or for SwiGLU [X, 2H]
    b_in: Option<ParamId>,
    /// [X, H, D]
    w_out: ParamId,
    /// [X, D]
    b_out: Option<ParamId>,
    feed_forward: FeedForward,
}

impl ExpertBank {
    pub fn new(b: &mut ParamBuilder, prefix: &str, model: &ModelConfig, experts: i64, hidden: i64) -> Self {
        let d = model.d_model;
        let input = model.feed_forward.input_width(hidden);
        let proj_std = 0.02 / (2.0 * model.layers as f64).sqrt();
        Self {
            w_in: b.add(format!("{prefix}.w_in"), &[experts, d, input], ParamGroup::Hidden, Init::Normal(0.02)),
            b_in: model.bias.then(|| b.add(format!("{prefix}.b_in"), &[experts, input], ParamGroup::Gain, Init::Zeros)),
            w_out: b.add(format!("{prefix}.w_out"), &[experts, hidden, d], ParamGroup::Hidden, Init::Normal(proj_std)),
            b_out: model.bias.then(|| b.add(format!("{prefix}.b_out"), &[experts, d], ParamGroup::Gain, Init::Zeros)),
            feed_forward: model.feed_forward,
        }
    }

    /// Every expert of the bank on every token, summed: x [N, D] → [N, D]. The bank is laid
    /// side by side, so this is two plain matmuls ([D, X·H] and [X·H, D]) instead of batched ones
    /// (for SwiGLU [D, X·2H], each expert's gate and up projection side by side).
    /// Weights taken over by the store's [`crate::params::Linears`] (8-bit, with a scale per
    /// expert and channel, which side by side would no longer factor out of one product) run
    /// expert by expert instead, each on every token.
    pub fn forward_all(&self, p: &ParamStore, x: &Tensor) -> Tensor {
        if p.replaces(self.w_in) || p.replaces(self.w_out) {
            let (n, d) = x.size2().unwrap();
            let nx = p.spec(self.w_in).shape[0];
            return self.forward(p, &x.unsqueeze(0).expand([nx, n, d], false)).sum_dim_intlist([0i64].as_slice(), false, None::<Kind>);
        }
        let w_in = p.get(self.w_in);
        let (nx, d, input) = w_in.size3().unwrap();
        let n = x.size()[0];
        let w_in = w_in.permute([1, 0, 2]).reshape([d, nx * input]);
        let w_out = p.get(self.w_out);
        let h = w_out.size()[1];
        let w_out = w_out.reshape([nx * h, d]);
        let projected = match self.b_in {
            Some(bi) => p.get(bi).reshape([nx * input]).addmm(x, &w_in),
            None => x.mm(&w_in),
        };
        // [N, X, input] → [N, X, H] → [N, X·H]
        let hid = activate(self.feed_forward, &projected.view([n, nx, input])).reshape([n, nx * h]);
        match self.b_out {
            Some(bo) if nx == 1 => p.get(bo).view([d]).addmm(&hid, &w_out),
            Some(bo) => p.get(bo).sum_dim_intlist([0i64].as_slice(), false, None::<Kind>).addmm(&hid, &w_out),
            None => hid.mm(&w_out),
        }
    }

    /// Expert x on its own slots: x [X, C, D] → [X, C, D].
    pub fn forward(&self, p: &ParamStore, x: &Tensor) -> Tensor {
        let h = activate(self.feed_forward, &p.expert_matmul(x, self.w_in, self.b_in));
        p.expert_matmul(&h, self.w_out, self.b_out)
    }
}

pub struct Moe {
    router: ParamId,
    experts: ExpertBank,
    /// Shared experts, each as wide as a routed one; every token passes through all of them.
    shared: Option<ExpertBank>,
    cfg: MoeConfig,
}

impl Moe {
    pub fn new(b: &mut ParamBuilder, prefix: &str, model: &ModelConfig, cfg: &MoeConfig) -> Self {
        let d = model.d_model;
        let (e, h) = (cfg.experts, cfg.expert_hidden);
        Self {
            router: b.add(format!("{prefix}.router.weight"), &[e, d], ParamGroup::Embedding, Init::Normal(0.02)),
            experts: ExpertBank::new(b, &format!("{prefix}.experts"), model, e, h),
            shared: (cfg.shared_experts > 0).then(|| ExpertBank::new(b, &format!("{prefix}.shared"), model, cfg.shared_experts, h)),
            cfg: cfg.clone(),
        }
    }

    /// Slots per expert for `n` tokens under the capacity factor.
    pub fn capacity(&self, n: i64) -> i64 {
        let ideal = (n * self.cfg.top_k) as f64 / self.cfg.experts as f64;
        ((ideal * self.cfg.capacity_factor).ceil() as i64).max(1)
    }

    /// x: [B, T, D]. With `routing`, reuse that decision instead of taking the router's top-k.
    pub fn forward(&self, p: &ParamStore, x: &Tensor, routing: Option<&Routing>, capacity: Capacity) -> MoeOutput {
        let (b, t, d) = x.size3().unwrap();
        let n = b * t;
        let (e, k) = (self.cfg.experts, self.cfg.top_k);
        let dev = x.device();
        let xf = x.reshape([n, d]);

        // Router in fp32. [N, E] It is not a quantization-aware product: routing decisions flip
        // on small changes of the logits, so an 8-bit export keeps the router in fp32.
        let logits = xf.to_kind(Kind::Float).linear::<Tensor>(&p.get(self.router).to_kind(Kind::Float), None);
        let probs = logits.softmax(-1, Kind::Float);
        let fresh = top_k(&probs, k);
        let (experts, routing_mismatches) = match routing {
            Some(r) => {
                let mismatches = disagreements(&fresh, &r.experts, k as usize);
                (r.experts.clone(), Some(Tensor::from(mismatches)))
            }
            None => (fresh, None),
        };
        let slots_per_expert = match capacity {
            Capacity::Factor => self.capacity(n),
            // every assignment fits; the plan takes the fullest expert's load
            Capacity::Dropless => n * k,
        };
        let plan = Dispatch::plan(&experts, e, k, slots_per_expert);
        let (cap, slots) = (plan.capacity, e * plan.capacity);
        // The gates [N, k] of each token's chosen experts: the router's probabilities, or those
        // divided by their sum (Mixtral's renormalised top-k); differentiable either way.
        let chosen = probs.gather(1, &upload(&experts, dev).view([n, k]), false);
        let gates = if self.cfg.normalize_top_k { &chosen / chosen.sum_dim_intlist([1i64].as_slice(), true, Kind::Float) } else { chosen };

        // Dispatch: one gather into [E, C, D] (an empty slot reads token 0 and is never read
        // back); experts as batched matmuls. Combine: one copy of each slot's output to its
        // assignment's row (distinct rows, so a copy and not a scatter-add, and its gradient is a
        // gather), then each token's k rows weighted by its gates in one batched product, added
        // to the shared experts' output. A dropped assignment's row stays zero; an empty slot
        // goes to a last row that is cut off.
        let kind = x.kind();
        let buckets = xf.index_select(0, &upload(&plan.slot_token, dev)).view([e, cap, d]);
        let out = self.experts.forward(p, &buckets).view([slots, d]);
        // [E·C, D] → [N·k, D] → [N, k, D]
        let returned = Tensor::zeros([n * k + 1, d], (kind, dev)).index_copy_(0, &upload(&plan.slot_assignment, dev), &out);
        let returned = returned.narrow(0, 0, n * k).view([n, k, d]);
        // [N, 1, k] · [N, k, D] → [N, 1, D]
        let gates = gates.to_kind(kind).unsqueeze(1);
        let y = match &self.shared {
            Some(shared) => shared.forward_all(p, &xf).unsqueeze(1).baddbmm(&gates, &returned, 1.0, 1.0),
            None => gates.bmm(&returned),
        };

        // Load balance (Switch Transformer): E · Σ_e (fraction routed to e) · (mean router
        // probability of e), as one dot product of the summed probabilities with host weights.
        let weights: Vec<f32> = plan.counts.iter().map(|&c| (e as f64 * c as f64 / (n * k) as f64 / n as f64) as f32).collect();
        let aux_loss = probs.sum_dim_intlist([0i64].as_slice(), false, Kind::Float).dot(&upload(&weights, dev));
        MoeOutput {
            y: y.view([b, t, d]),
            aux_loss,
            dropped: Tensor::from(plan.dropped),
            assignments: n * k,
            routing: Routing { experts },
            routing_mismatches,
        }
    }
}

/// The router's top-k experts of each row of `probs` [N, E], highest first, on the host. On a
/// CPU this is one pass over the probabilities in Rust: libtorch's `topk` over [N, E] rows of a
/// few dozen experts costs more than the rest of the routing together. A tie goes to the lower
/// expert index; a NaN row still yields k distinct, valid experts.
fn top_k(probs: &Tensor, k: i64) -> Vec<i64> {
    if probs.device() != tch::Device::Cpu || probs.kind() != Kind::Float {
        let chosen = tch::no_grad(|| probs.topk(k, -1, true, false).1);
        return Vec::<i64>::try_from(chosen.reshape([-1]).to_device(tch::Device::Cpu)).unwrap();
    }
    let (n, e) = probs.size2().unwrap();
    let probs = probs.contiguous();
    // SAFETY: `probs` is a contiguous fp32 CPU tensor of n · e elements, alive and unwritten
    // while the slice is read.
    let p = unsafe { std::slice::from_raw_parts(probs.data_ptr() as *const f32, (n * e) as usize) };
    let k = k as usize;
    let mut out = Vec::with_capacity(n as usize * k);
    let (mut idx, mut val) = (vec![0i64; k], vec![0f32; k]);
    for row in p.chunks_exact(e as usize) {
        // Insertion into the row's best k so far, kept highest first; equal values keep the
        // earlier expert ahead, and a NaN is never placed ahead of anything.
        let mut len = 0;
        for (i, &v) in row.iter().enumerate() {
            if len == k && v.partial_cmp(&val[k - 1]) != Some(std::cmp::Ordering::Greater) {
                continue;
            }
            let at = val[..len].iter().position(|&w| v > w).unwrap_or(len);
            if at == k {
                continue;
            }
            let end = (len + 1).min(k);
            for j in (at + 1..end).rev() {
                idx[j] = idx[j - 1];
                val[j] = val[j - 1];
            }
            idx[at] = i as i64;
            val[at] = v;
            len = end;
        }
        out.extend_from_slice(&idx);
    }
    out
}

/// A host vector as a tensor on `device`.
fn upload<T: tch::kind::Element>(v: &[T], device: tch::Device) -> Tensor {
    Tensor::from_slice(v).to_device(device)
}

/// Token-expert choices in `now` that `then` did not make for the same token.
fn disagreements(now: &[i64], then: &[i64], k: usize) -> i64 {
    now.chunks_exact(k).zip(then.chunks_exact(k)).map(|(a, b)| a.iter().filter(|c| !b.contains(c)).count() as i64).sum()
}

/// Where every token-expert assignment goes: the first `capacity` assignments of each expert in
/// token order fill its bucket, the rest are dropped. Computed on the host in one pass.
struct Dispatch {
    /// Slots per expert: the capacity, or the fullest expert's load when that is smaller.
    capacity: i64,
    /// [E · capacity]: the token in each slot (0 for an empty slot).
    slot_token: Vec<i64>,
    /// [E · capacity]: the assignment in each slot, or N · k, one past the last assignment, for
    /// an empty slot.
    slot_assignment: Vec<i64>,
    /// Assignments per expert before dropping.
    counts: Vec<i64>,
    dropped: i64,
}

impl Dispatch {
    fn plan(experts: &[i64], e: i64, k: i64, capacity: i64) -> Self {
        let mut counts = vec![0i64; e as usize];
        for &c in experts {
            counts[c as usize] += 1;
        }
        let cap = capacity.min(counts.iter().copied().max().unwrap_or(0)).max(1);
        let slots = e * cap;
        let mut slot_token = vec![0i64; slots as usize];
        let mut slot_assignment = vec![experts.len() as i64; slots as usize];
        let mut filled = vec![0i64; e as usize];
        let mut dropped = 0;
        for (i, &c) in experts.iter().enumerate() {
            let f = &mut filled[c as usize];
            if *f == cap {
                dropped += 1;
                continue;
            }
            let slot = c * cap + *f;
            *f += 1;
            slot_token[slot as usize] = i as i64 / k;
            slot_assignment[slot as usize] = i as i64;
        }
        Self { capacity: cap, slot_token, slot_assignment, counts, dropped }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::nano_model;
    use crate::rng::Rng;
    use tch::Device;

    /// One MoE layer's shape for a test: the routing, the experts' feed-forward, the gates.
    #[derive(Clone, Copy)]
    struct Case {
        experts: i64,
        top_k: i64,
        shared: i64,
        capacity_factor: f64,
        feed_forward: FeedForward,
        normalize_top_k: bool,
    }

    impl Case {
        fn new(experts: i64, top_k: i64, shared: i64, capacity_factor: f64) -> Self {
            Self { experts, top_k, shared, capacity_factor, feed_forward: FeedForward::Gelu, normalize_top_k: false }
        }
        fn swiglu(self) -> Self {
            Self { feed_forward: FeedForward::Swiglu, ..self }
        }
        fn normalized(self) -> Self {
            Self { normalize_top_k: true, ..self }
        }
    }

    /// A small MoE layer with every weight (biases included) random, so that a wrong expert,
    /// slot or gate shows in the output.
    fn layer(case: Case) -> (Moe, ParamStore) {
        let mut model = nano_model(16);
        (model.d_model, model.feed_forward) = (8, case.feed_forward);
        let cfg = MoeConfig {
            experts: case.experts,
            top_k: case.top_k,
            shared_experts: case.shared,
            expert_hidden: 6,
            every_n_layers: 1,
            capacity_factor: case.capacity_factor,
            load_balance_weight: 0.01,
            normalize_top_k: case.normalize_top_k,
        };
        let mut b = ParamBuilder::default();
        let moe = Moe::new(&mut b, "moe", &model, &cfg);
        let mut store = ParamStore::new(b, &mut Rng::new(7), Device::Cpu, Kind::Float);
        tch::manual_seed(3);
        tch::no_grad(|| {
            store.master.copy_(&(Tensor::randn([store.numel], (Kind::Float, Device::Cpu)) * 0.5));
        });
        (moe, store)
    }

    /// Expert `e` of a bank on one token, from its slices of the bank's weights: a GELU MLP, or
    /// a SwiGLU whose gate is columns 0..H of `w_in` and up projection columns H..2H.
    fn expert(p: &ParamStore, bank: &ExpertBank, e: i64, x: &Tensor) -> Tensor {
        let (w_in, b_in) = (p.get(bank.w_in).get(e), p.get(bank.b_in.unwrap()).get(e));
        let hidden = match bank.feed_forward {
            FeedForward::Gelu => (x.matmul(&w_in) + b_in).gelu("none"),
            FeedForward::Swiglu => {
                let h = p.get(bank.w_out).size()[1];
                let gate = x.matmul(&w_in.narrow(1, 0, h)) + b_in.narrow(0, 0, h);
                let up = x.matmul(&w_in.narrow(1, h, h)) + b_in.narrow(0, h, h);
                &gate * gate.sigmoid() * up
            }
        };
        hidden.matmul(&p.get(bank.w_out).get(e)) + p.get(bank.b_out.unwrap()).get(e)
    }

    /// Token by token: the router's top-k, the first `cap` assignments of each expert in token
    /// order kept, each kept expert's output times its gate (the probability, or divided by the
    /// sum of the token's k chosen probabilities), plus every shared expert.
    fn reference(moe: &Moe, p: &ParamStore, x: &Tensor, cap: i64) -> (Tensor, i64, f64) {
        let (b, t, d) = x.size3().unwrap();
        let n = b * t;
        let (e, k) = (moe.cfg.experts, moe.cfg.top_k);
        let xf = x.reshape([n, d]);
        let probs = xf.linear::<Tensor>(p.get(moe.router), None).softmax(-1, Kind::Float);
        let chosen = Vec::<i64>::try_from(probs.topk(k, -1, true, false).1.reshape([n * k])).unwrap();
        let mut counts = vec![0i64; e as usize];
        for &c in &chosen {
            counts[c as usize] += 1;
        }
        let cap = cap.min(*counts.iter().max().unwrap());
        let mut used = vec![0i64; e as usize];
        let mut dropped = 0;
        let mut rows = Vec::new();
        for i in 0..n {
            let xi = xf.get(i);
            let mut yi = xi.zeros_like();
            if let Some(shared) = &moe.shared {
                for s in 0..moe.cfg.shared_experts {
                    yi = yi + expert(p, shared, s, &xi);
                }
            }
            let mine = &chosen[(i * k) as usize..((i + 1) * k) as usize];
            let chosen_sum = mine.iter().map(|&c| probs.get(i).get(c)).fold(Tensor::zeros([], (Kind::Float, Device::Cpu)), |a, p| a + p);
            for &c in mine {
                if used[c as usize] < cap {
                    used[c as usize] += 1;
                    let gate = if moe.cfg.normalize_top_k { probs.get(i).get(c) / &chosen_sum } else { probs.get(i).get(c) };
                    yi = yi + expert(p, &moe.experts, c, &xi) * gate;
                } else {
                    dropped += 1;
                }
            }
            rows.push(yi);
        }
        // Load balance: E · Σ_e (share of assignments routed to e) · (mean probability of e).
        let mut aux = 0.0;
        for c in 0..e {
            let share = counts[c as usize] as f64 / (n * k) as f64;
            aux += share * probs.select(1, c).mean(Kind::Float).double_value(&[]);
        }
        (Tensor::stack(&rows, 0).view([b, t, d]), dropped, aux * e as f64)
    }

    fn leaves(moe: &Moe, p: &ParamStore) -> Vec<Tensor> {
        let mut ids = vec![moe.router, moe.experts.w_in, moe.experts.w_out];
        ids.extend(moe.experts.b_in.iter().chain(moe.experts.b_out.iter()).copied());
        if let Some(s) = &moe.shared {
            ids.extend([s.w_in, s.w_out]);
            ids.extend(s.b_in.iter().chain(s.b_out.iter()).copied());
        }
        ids.into_iter().map(|id| p.get(id).shallow_clone()).collect()
    }

    /// The layer's forward and gradients under `capacity` against the per-token reference.
    fn check_under(case: Case, capacity: Capacity, expect_drops: bool) {
        let (moe, p) = layer(case);
        let x = Tensor::randn([3, 7, 8], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let upstream = Tensor::randn([3, 7, 8], (Kind::Float, Device::Cpu));
        let mut inputs = vec![x.shallow_clone()];
        inputs.extend(leaves(&moe, &p));

        let out = moe.forward(&p, &x, None, capacity);
        let fast = Tensor::run_backward(&[(&out.y * &upstream).sum(Kind::Float)], &inputs, false, false);
        let cap = match capacity {
            Capacity::Factor => moe.capacity(21),
            Capacity::Dropless => i64::MAX,
        };
        let (want, want_dropped, want_aux) = reference(&moe, &p, &x, cap);
        let slow = Tensor::run_backward(&[(&want * &upstream).sum(Kind::Float)], &inputs, false, false);

        assert_eq!(out.dropped.int64_value(&[]), want_dropped, "dropped assignments");
        let aux = out.aux_loss.double_value(&[]);
        assert!((aux - want_aux).abs() < 1e-5, "load-balancing loss {aux}, per-token reference {want_aux}");
        assert_eq!(expect_drops, want_dropped > 0, "this case is meant to {}drop", if expect_drops { "" } else { "not " });
        let diff = (&out.y - &want).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "output differs from the per-token reference by {diff}");
        for (i, (f, s)) in fast.iter().zip(&slow).enumerate() {
            let diff = (f - s).abs().max().double_value(&[]);
            assert!(diff < 1e-5, "gradient of input {i} differs from the reference by {diff}");
        }
    }

    fn check(case: Case, expect_drops: bool) {
        check_under(case, Capacity::Factor, expect_drops)
    }

    #[test]
    fn bucketed_dispatch_matches_a_per_token_reference() {
        check(Case::new(4, 2, 1, 4.0), false);
        check(Case::new(6, 3, 2, 4.0), false);
    }

    #[test]
    fn swiglu_experts_match_a_per_token_reference() {
        check(Case::new(4, 2, 1, 4.0).swiglu(), false);
        check(Case::new(5, 2, 2, 0.6).swiglu(), true);
    }

    #[test]
    fn normalized_gates_divide_by_the_sum_of_the_chosen_probabilities() {
        check(Case::new(6, 3, 1, 4.0).normalized(), false);
        check(Case::new(4, 2, 0, 0.5).swiglu().normalized(), true);
        // the k gates of every token add up to 1: a layer of identical experts without shared
        // ones gives each token that expert's output, whichever experts it was sent to
        let (moe, p) = layer(Case::new(4, 2, 0, 4.0).normalized());
        tch::no_grad(|| {
            for id in [moe.experts.w_in, moe.experts.w_out, moe.experts.b_in.unwrap(), moe.experts.b_out.unwrap()] {
                let mut w = p.get(id).shallow_clone();
                let first = w.get(0).unsqueeze(0).expand_as(&w).copy();
                w.copy_(&first);
            }
        });
        let x = Tensor::randn([2, 5, 8], (Kind::Float, Device::Cpu));
        let y = moe.forward(&p, &x, None, Capacity::Dropless).y;
        let one = expert(&p, &moe.experts, 0, &x);
        let diff = (y - one).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "gates of a token sum to 1 less {diff}");
    }

    #[test]
    fn host_top_k_picks_what_libtorch_picks() {
        tch::manual_seed(11);
        let probs = Tensor::randn([200, 16], (Kind::Float, Device::Cpu)).softmax(-1, Kind::Float);
        let want = Vec::<i64>::try_from(probs.topk(3, -1, true, true).1.reshape([-1])).unwrap();
        assert_eq!(top_k(&probs, 3), want);
        // Ties go to the lower index; a NaN row still gives k distinct valid experts.
        let tied = Tensor::from_slice(&[0.25f32, 0.5, 0.25, 0.0, f32::NAN, f32::NAN, f32::NAN, f32::NAN]).view([2, 4]);
        let got = top_k(&tied, 2);
        assert_eq!(&got[..2], &[1, 0]);
        assert!(got[2] != got[3] && got[2..].iter().all(|&c| (0..4).contains(&c)), "{got:?}");
    }

    #[test]
    fn assignments_past_capacity_are_dropped_in_token_order() {
        check(Case::new(4, 2, 1, 0.5), true);
        check(Case::new(5, 1, 0, 0.6), true);
    }

    #[test]
    fn evaluation_drops_nothing_and_equals_an_unbounded_capacity() {
        // a capacity factor that drops in training
        let tight = Case::new(4, 2, 1, 0.5).swiglu();
        check_under(tight, Capacity::Factor, true);
        check_under(tight, Capacity::Dropless, false);
        let (moe, p) = layer(tight);
        let (unbounded, q) = layer(Case { capacity_factor: 64.0, ..tight });
        assert!(p.master.equal(&q.master), "the same weights");
        let x = Tensor::randn([3, 7, 8], (Kind::Float, Device::Cpu));
        let dropless = moe.forward(&p, &x, None, Capacity::Dropless);
        let wide = unbounded.forward(&q, &x, None, Capacity::Factor);
        assert_eq!((dropless.dropped.int64_value(&[]), wide.dropped.int64_value(&[])), (0, 0));
        assert!(dropless.y.equal(&wide.y), "dropless evaluation differs from a capacity factor of 64");
        assert!(moe.forward(&p, &x, None, Capacity::Factor).dropped.int64_value(&[]) > 0, "training at factor 0.5 drops");
    }
}
