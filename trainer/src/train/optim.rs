//! Optimizers over the flat parameter buffer: one AdamW update is a handful of kernels over a
//! contiguous range, whatever the number of parameters. Muon orthogonalises the momentum of the
//! hidden matrices (Newton–Schulz) and leaves embeddings, router, gains and biases to AdamW.
//! Also the learning-rate schedules and the global-norm clip.

use crate::config::{OptimConfig, OptimizerKind, Schedule};
use crate::params::{ParamGroup, ParamStore};
use std::collections::BTreeMap;
use tch::{Device, Kind, Tensor};

/// Learning rate at `step` (0-based) of `total` steps.
pub fn lr_at(cfg: &OptimConfig, step: i64, total: i64) -> f64 {
    let warm = cfg.warmup_steps;
    if step < warm {
        return cfg.lr * (step + 1) as f64 / (warm + 1) as f64;
    }
    match cfg.schedule {
        Schedule::Constant => cfg.lr,
        Schedule::Cosine => {
            if step >= total || total <= warm {
                return cfg.min_lr;
            }
            let ratio = (step - warm) as f64 / (total - warm) as f64;
            let coeff = 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos());
            cfg.min_lr + coeff * (cfg.lr - cfg.min_lr)
        }
        Schedule::Trapezoidal { decay_fraction } => {
            let decay_steps = ((total as f64) * decay_fraction).round().max(1.0) as i64;
            let decay_start = (total - decay_steps).max(warm);
            if step < decay_start {
                cfg.lr
            } else {
                let frac = ((step - decay_start) as f64 / (total - decay_start).max(1) as f64).min(1.0);
                cfg.lr - (cfg.lr - cfg.min_lr) * frac
            }
        }
    }
}

/// Scales the gradient so its global L2 norm is at most `max_norm`; returns the norm before
/// clipping (a 0-d tensor, no host sync).
pub fn clip_grad_norm(grad: &mut Tensor, max_norm: f64) -> Tensor {
    let norm = grad.norm();
    if max_norm > 0.0 {
        let coef = (max_norm / (&norm + 1e-6)).clamp_max(1.0);
        let _ = grad.g_mul_(&coef);
    }
    norm
}

/// Parameters of one shape updated by Muon together (batched Newton–Schulz).
struct MuonGroup {
    shape: Vec<i64>,
    /// (offset, numel) of each member in the flat buffer.
    members: Vec<(i64, i64)>,
}

pub struct Optimizer {
    pub cfg: OptimConfig,
    /// Updates applied so far (bias correction).
    pub updates: i64,
    /// The part of the flat buffer this optimizer updates and keeps state for: all of it, or
    /// one replica's shard when the state is sharded across replicas (ZeRO stage 1).
    pub region: (i64, i64),
    /// The AdamW range `[start, end)` of the flat buffer: the whole buffer for AdamW, what
    /// follows the hidden group for Muon; within `region`.
    adam: (i64, i64),
    /// End of the decayed part (hidden + embedding groups).
    decay_end: i64,
    /// AdamW moments over `adam`.
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// Muon momentum over the hidden group's part of `region`, `[muon.0, muon.1)`.
    muon: (i64, i64),
    momentum: Option<Tensor>,
    muon_groups: Vec<MuonGroup>,
}

/// Where the flat buffer is cut to shard the optimizer state across `replicas`: contiguous
/// regions of whole parameters (Newton–Schulz needs whole matrices, and checkpoints name whole
/// tensors), balanced by element count. Region r is `cuts[r]..cuts[r + 1]`.
pub fn shard_regions(store: &ParamStore, replicas: usize) -> Vec<(i64, i64)> {
    let n = replicas.max(1) as i64;
    let mut ends: Vec<i64> = store.specs.iter().map(|s| s.offset + s.numel()).collect();
    ends.sort_unstable();
    let mut cuts = vec![0];
    for r in 1..n {
        let want = store.numel * r / n;
        // the parameter boundary nearest the even cut, never before the previous cut
        let at = ends.iter().copied().min_by_key(|&e| (e - want).abs()).unwrap_or(0).max(*cuts.last().unwrap());
        cuts.push(at);
    }
    cuts.push(store.numel);
    cuts.windows(2).map(|w| (w[0], w[1])).collect()
}

impl Optimizer {
    pub fn new(cfg: &OptimConfig, store: &ParamStore) -> Self {
        Self::for_region(cfg, store, (0, store.numel))
    }

    /// An optimizer that updates and keeps state for `region` of the flat buffer only (one of
    /// [`shard_regions`]).
    pub fn for_region(cfg: &OptimConfig, store: &ParamStore, region: (i64, i64)) -> Self {
        let is_muon = cfg.kind == OptimizerKind::Muon;
        let adam_start = if is_muon { store.hidden_end } else { 0 };
        let clamp = |x: i64, lo: i64, hi: i64| x.max(lo).min(hi);
        let adam = (clamp(region.0, adam_start, store.numel), clamp(region.1, adam_start, store.numel));
        let muon = if is_muon { (region.0.min(store.hidden_end), region.1.min(store.hidden_end)) } else { (0, 0) };
        let zeros = |n: i64| Tensor::zeros([n], (Kind::Float, store.device));
        let mut groups: BTreeMap<Vec<i64>, Vec<(i64, i64)>> = BTreeMap::new();
        if is_muon {
            for s in store.specs.iter().filter(|s| s.group == ParamGroup::Hidden && s.offset >= muon.0 && s.offset < muon.1) {
                groups.entry(s.shape.clone()).or_default().push((s.offset, s.numel()));
            }
        }
        Self {
            cfg: cfg.clone(),
            updates: 0,
            region,
            adam,
            decay_end: store.embedding_end,
            exp_avg: zeros(adam.1 - adam.0),
            exp_avg_sq: zeros(adam.1 - adam.0),
            muon,
            momentum: is_muon.then(|| zeros(muon.1 - muon.0)),
            muon_groups: groups.into_iter().map(|(shape, members)| MuonGroup { shape, members }).collect(),
        }
    }

    /// Bytes of optimizer state held.
    pub fn state_bytes(&self) -> i64 {
        4 * (self.exp_avg.numel() + self.exp_avg_sq.numel() + self.momentum.as_ref().map_or(0, |m| m.numel())) as i64
    }

    /// One update of the master weights from the flat gradient, at learning rate `lr` (AdamW)
    /// and `lr / cfg.lr` times Muon's own rate.
    pub fn step(&mut self, store: &mut ParamStore, lr: f64) {
        self.step_scaled(store, lr, 1.0);
    }

    /// As [`Optimizer::step`], with the gradient taken times `grad_coef` (the clip coefficient)
    /// as AdamW reads it, so the clip costs no pass of its own; with Muon, which reads the
    /// gradient too, it is scaled in place first. On the CPU the AdamW update is one fused pass
    /// over the buffer. Only `region` of the weights changes.
    pub fn step_scaled(&mut self, store: &mut ParamStore, lr: f64, grad_coef: f64) {
        let _guard = tch::no_grad_guard();
        self.updates += 1;
        let fused = store.device == Device::Cpu;
        let mut coef = grad_coef;
        if coef != 1.0 && self.momentum.is_some() {
            let _ = store.grad.narrow(0, self.region.0, self.region.1 - self.region.0).g_mul_scalar_(coef);
            coef = 1.0;
        }
        let c = &self.cfg;
        let t = self.updates as f64;
        let (a0, n) = (self.adam.0, self.adam.1 - self.adam.0);
        let p = store.master.narrow(0, a0, n);
        let g = store.grad.narrow(0, a0, n);
        // Decoupled weight decay on the decayed prefix of the AdamW range only.
        let decayed = (self.decay_end - a0).clamp(0, n);
        for (start, len, weight_decay) in [(0, decayed, c.weight_decay), (decayed, n - decayed, 0.0)] {
            if len == 0 {
                continue;
            }
            let h = AdamHyper {
                lr,
                weight_decay,
                beta1: c.beta1,
                beta2: c.beta2,
                eps: c.eps,
                bias_correction1: 1.0 - c.beta1.powf(t),
                bias_correction2: 1.0 - c.beta2.powf(t),
                grad_coef: coef,
            };
            let range = |t: &Tensor| t.narrow(0, start, len);
            let (p, g, m, v) = (range(&p), range(&g), range(&self.exp_avg), range(&self.exp_avg_sq));
            if fused {
                adamw_cpu(&p, &g, &m, &v, &h);
            } else {
                adamw_tensors(&p, &g, &m, &v, &h);
            }
        }

        if let Some(mom) = &mut self.momentum
            && self.muon.1 > self.muon.0
        {
            let muon_lr = c.muon_lr * lr / c.lr;
            let (m0, len) = (self.muon.0, self.muon.1 - self.muon.0);
            let g = store.grad.narrow(0, m0, len);
            let _ = mom.lerp_(&g, 1.0 - c.muon_momentum);
            // Nesterov: g + μ(m - g).
            let nesterov = g.lerp(mom, c.muon_momentum);
            if c.weight_decay > 0.0 {
                let _ = store.master.narrow(0, m0, len).g_mul_scalar_(1.0 - muon_lr * c.weight_decay);
            }
            for group in &self.muon_groups {
                let mut shape = vec![group.members.len() as i64];
                shape.extend(&group.shape);
                let stacked =
                    Tensor::stack(&group.members.iter().map(|&(o, n)| nesterov.narrow(0, o - m0, n)).collect::<Vec<_>>(), 0).view(shape.as_slice());
                let (rows, cols) = (group.shape[group.shape.len() - 2], group.shape[group.shape.len() - 1]);
                let update = newton_schulz(&stacked) * (-muon_lr * (rows as f64 / cols as f64).max(1.0).sqrt());
                let update = update.view([group.members.len() as i64, -1]);
                for (i, &(o, n)) in group.members.iter().enumerate() {
                    let _ = store.master.narrow(0, o, n).g_add_(&update.get(i as i64));
                }
            }
        }
    }

    /// Optimizer state under global parameter names, for checkpoints: of the parameters in
    /// `region` (all of them unless sharded).
    pub fn state_tensors(&self, store: &ParamStore) -> Vec<(String, Tensor)> {
        let mut out = vec![];
        for s in store.specs.iter().filter(|s| s.offset >= self.region.0 && s.offset < self.region.1) {
            if s.offset >= self.adam.0 && s.offset < self.adam.1 {
                let o = s.offset - self.adam.0;
                out.push((format!("exp_avg.{}", s.name), self.exp_avg.narrow(0, o, s.numel()).view(s.shape.as_slice())));
                out.push((format!("exp_avg_sq.{}", s.name), self.exp_avg_sq.narrow(0, o, s.numel()).view(s.shape.as_slice())));
            } else if let Some(m) = &self.momentum {
                out.push((format!("momentum.{}", s.name), m.narrow(0, s.offset - self.muon.0, s.numel()).view(s.shape.as_slice())));
            }
        }
        out
    }

    /// An optimizer over the whole buffer holding this one's state in its region and zeros
    /// elsewhere: summed across the replicas of a sharded optimizer (see [`Self::state_buffers`])
    /// it is the unsharded state, which a checkpoint writes.
    pub fn widened(&self, store: &ParamStore) -> Self {
        let mut full = Self::new(&self.cfg, store);
        full.updates = self.updates;
        let _guard = tch::no_grad_guard();
        if self.adam.1 > self.adam.0 {
            let o = self.adam.0 - full.adam.0;
            full.exp_avg.narrow(0, o, self.adam.1 - self.adam.0).copy_(&self.exp_avg);
            full.exp_avg_sq.narrow(0, o, self.adam.1 - self.adam.0).copy_(&self.exp_avg_sq);
        }
        if let (Some(mine), Some(theirs)) = (&self.momentum, &mut full.momentum)
            && self.muon.1 > self.muon.0
        {
            theirs.narrow(0, self.muon.0, self.muon.1 - self.muon.0).copy_(mine);
        }
        full
    }

    /// The flat state buffers (AdamW's two moments, Muon's momentum).
    pub fn state_buffers(&self) -> Vec<&Tensor> {
        [&self.exp_avg, &self.exp_avg_sq].into_iter().chain(self.momentum.as_ref()).collect()
    }
}

/// The numbers of one AdamW update of one range.
struct AdamHyper {
    lr: f64,
    weight_decay: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    bias_correction1: f64,
    bias_correction2: f64,
    /// The gradient is read times this (the clip coefficient).
    grad_coef: f64,
}

/// AdamW as tensor ops (any device): p ← p·(1 − lr·wd); m ← m + (1−β₁)(g − m);
/// v ← v + (1−β₂)(g² − v); p ← p − lr/bc₁ · m / (√v / √bc₂ + ε).
fn adamw_tensors(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, h: &AdamHyper) {
    let (mut p, mut m, mut v) = (p.shallow_clone(), m.shallow_clone(), v.shallow_clone());
    let g = if h.grad_coef == 1.0 { g.shallow_clone() } else { g * h.grad_coef };
    if h.weight_decay > 0.0 {
        let _ = p.g_mul_scalar_(1.0 - h.lr * h.weight_decay);
    }
    let _ = m.lerp_(&g, 1.0 - h.beta1);
    let _ = v.lerp_(&g.square(), 1.0 - h.beta2);
    let mut denom = v.sqrt();
    let _ = denom.g_div_scalar_(h.bias_correction2.sqrt()).g_add_scalar_(h.eps);
    let _ = p.g_sub_(&((&m / denom) * (h.lr / h.bias_correction1)));
}

/// The same update over contiguous fp32 CPU ranges in one pass: each element of the weights,
/// gradient and both moments is read and written once, where the tensor form makes about ten
/// passes over the buffer. The same arithmetic element by element, in fp32. Split across
/// libtorch's intra-op thread count; every element is independent, so the result does not
/// depend on the split.
fn adamw_cpu(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, h: &AdamHyper) {
    let n = p.numel();
    for t in [p, g, m, v] {
        assert!(t.device() == Device::Cpu && t.kind() == Kind::Float && t.is_contiguous() && t.numel() == n);
    }
    // SAFETY: the four tensors are contiguous fp32 CPU ranges of `n` elements (checked above) in
    // four different buffers (weights, gradient and the two moments), and nothing else reads or
    // writes them until this function returns.
    let (p, g, m, v) = unsafe {
        (
            std::slice::from_raw_parts_mut(p.data_ptr() as *mut f32, n),
            std::slice::from_raw_parts(g.data_ptr() as *const f32, n),
            std::slice::from_raw_parts_mut(m.data_ptr() as *mut f32, n),
            std::slice::from_raw_parts_mut(v.data_ptr() as *mut f32, n),
        )
    };
    let k = AdamScalars {
        decay: (1.0 - h.lr * h.weight_decay) as f32,
        grad_coef: h.grad_coef as f32,
        avg_weight: (1.0 - h.beta1) as f32,
        sq_weight: (1.0 - h.beta2) as f32,
        bc2_sqrt: h.bias_correction2.sqrt() as f32,
        eps: h.eps as f32,
        step_size: (h.lr / h.bias_correction1) as f32,
    };
    let threads = (tch::get_num_threads().max(1) as usize).min(n.div_ceil(1 << 15)).max(1);
    let chunk = n.div_ceil(threads);
    let mut parts = p.chunks_mut(chunk).zip(g.chunks(chunk)).zip(m.chunks_mut(chunk)).zip(v.chunks_mut(chunk));
    let first = parts.next();
    let k = &k;
    std::thread::scope(|s| {
        for (((p, g), m), v) in parts {
            s.spawn(move || adamw_range(p, g, m, v, k));
        }
        if let Some((((p, g), m), v)) = first {
            adamw_range(p, g, m, v, k);
        }
    });
}

/// [`AdamHyper`] as the fp32 values the fused loop uses.
struct AdamScalars {
    decay: f32,
    grad_coef: f32,
    avg_weight: f32,
    sq_weight: f32,
    bc2_sqrt: f32,
    eps: f32,
    step_size: f32,
}

fn adamw_range(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: &AdamScalars) {
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        let g = g * k.grad_coef;
        *m += k.avg_weight * (g - *m);
        *v += k.sq_weight * (g * g - *v);
        let denom = v.sqrt() / k.bc2_sqrt + k.eps;
        *p = *p * k.decay - k.step_size * (*m / denom);
    }
}

/// Approximate orthogonalisation UΣVᵀ → UVᵀ of each trailing matrix (5 Newton–Schulz steps with
/// the quintic coefficients of Muon), in bf16 as published Muon runs it, wherever bf16 products
/// are native: on GPUs, and on CPUs with AVX-512 BF16 (2.9× faster than fp32 there at the
/// economics shape's matrices); fp32 on other CPUs, where bf16 products are emulated.
pub fn newton_schulz(g: &Tensor) -> Tensor {
    let (a, b, c) = (3.4445, -4.7750, 2.0315);
    let kind = if g.device().is_cuda() || cpu_has_bf16() { Kind::BFloat16 } else { Kind::Float };
    let nd = g.dim() as i64;
    let tall = g.size()[nd as usize - 2] > g.size()[nd as usize - 1];
    let mut x = g.to_kind(kind);
    if tall {
        x = x.transpose(-2, -1);
    }
    let norm = x.to_kind(Kind::Float).square().sum_dim_intlist([-2i64, -1].as_slice(), true, Kind::Float).sqrt();
    x = x / (norm + 1e-7).to_kind(kind);
    for _ in 0..5 {
        let xt = x.transpose(-2, -1);
        let m = x.matmul(&xt);
        let bm = &m * b + m.matmul(&m) * c;
        x = &x * a + bm.matmul(&x);
    }
    if tall {
        x = x.transpose(-2, -1);
    }
    x.to_kind(Kind::Float)
}

/// Whether this CPU multiplies bf16 natively (AVX-512 BF16).
fn cpu_has_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_warm_up_and_decay() {
        let cfg = OptimConfig { lr: 1.0, min_lr: 0.1, warmup_steps: 10, ..Default::default() };
        assert!((lr_at(&cfg, 0, 100) - 1.0 / 11.0).abs() < 1e-12);
        assert!((lr_at(&cfg, 10, 100) - 1.0).abs() < 1e-12);
        assert!((lr_at(&cfg, 100, 100) - 0.1).abs() < 1e-12);
        let mid = lr_at(&cfg, 55, 100);
        assert!((mid - 0.55).abs() < 1e-9, "{mid}");
        let trap = OptimConfig { schedule: Schedule::Trapezoidal { decay_fraction: 0.2 }, ..cfg };
        assert_eq!(lr_at(&trap, 50, 100), 1.0);
        assert!((lr_at(&trap, 90, 100) - 0.55).abs() < 1e-9);
    }

    #[test]
    fn newton_schulz_orthogonalises() {
        tch::manual_seed(1);
        let g = Tensor::randn([3, 32, 16], (Kind::Float, tch::Device::Cpu));
        let x = newton_schulz(&g);
        // Singular values end up near 1 (Muon's iteration lands them in about [0.7, 1.2]).
        // Singular values as square roots of the eigenvalues of Xᵀ·X (16×16 per matrix).
        let xt = x.transpose(-2, -1);
        let s = xt.matmul(&x).to_kind(Kind::Double).linalg_eigvalsh("L").clamp_min(0.0).sqrt();
        let (lo, hi) = (s.min().double_value(&[]), s.max().double_value(&[]));
        assert!(lo > 0.5 && hi < 1.3, "singular values in [{lo}, {hi}]");
    }

    #[test]
    fn fused_cpu_adamw_matches_the_tensor_form() {
        tch::manual_seed(3);
        let n = 100_003; // not a multiple of the split
        let zeros = || Tensor::zeros([n], (Kind::Float, Device::Cpu));
        let p0 = Tensor::randn([n], (Kind::Float, Device::Cpu));
        let (fused, tensors) = ([p0.copy(), zeros(), zeros()], [p0.copy(), zeros(), zeros()]);
        for t in 1..=3 {
            let g = Tensor::randn([n], (Kind::Float, Device::Cpu)) * 1e-2;
            let h = AdamHyper {
                lr: 1e-2,
                weight_decay: 0.1,
                beta1: 0.9,
                beta2: 0.99,
                eps: 1e-8,
                bias_correction1: 1.0 - 0.9f64.powi(t),
                bias_correction2: 1.0 - 0.99f64.powi(t),
                grad_coef: 0.5,
            };
            adamw_cpu(&fused[0], &g, &fused[1], &fused[2], &h);
            adamw_tensors(&tensors[0], &g, &tensors[1], &tensors[2], &h);
        }
        assert!((&fused[0] - &p0).abs().max().double_value(&[]) > 1e-3, "the weights moved");
        for (name, a, b) in [("weights", &fused[0], &tensors[0]), ("m", &fused[1], &tensors[1]), ("v", &fused[2], &tensors[2])] {
            let err = (a - b).abs().max().double_value(&[]);
            let scale = b.abs().max().double_value(&[]);
            assert!(err <= 1e-6 * scale, "{name}: differs by {err} (max {scale})");
        }
    }

    fn store() -> ParamStore {
        let mut b = crate::params::ParamBuilder::default();
        b.add("h1", &[8, 4], ParamGroup::Hidden, crate::params::Init::Normal(0.1));
        b.add("h2", &[4, 8], ParamGroup::Hidden, crate::params::Init::Normal(0.1));
        b.add("h3", &[8, 8], ParamGroup::Hidden, crate::params::Init::Normal(0.1));
        b.add("wte", &[10, 4], ParamGroup::Embedding, crate::params::Init::Normal(0.1));
        b.add("g", &[4], ParamGroup::Gain, crate::params::Init::Ones);
        ParamStore::new(b, &mut crate::rng::Rng::new(1), Device::Cpu, Kind::Float)
    }

    #[test]
    fn sharded_optimizers_update_their_regions_as_one_unsharded_one() {
        for kind in [OptimizerKind::AdamW, OptimizerKind::Muon] {
            let cfg = OptimConfig { kind, weight_decay: 0.1, ..Default::default() };
            let mut whole = store();
            let regions = shard_regions(&whole, 3);
            assert_eq!((regions[0].0, regions[2].1), (0, whole.numel));
            assert!(regions.windows(2).all(|w| w[0].1 == w[1].0), "{regions:?}");
            let mut one = Optimizer::new(&cfg, &whole);
            let mut shards: Vec<(ParamStore, Optimizer)> = regions
                .iter()
                .map(|&r| {
                    let st = store();
                    let o = Optimizer::for_region(&cfg, &st, r);
                    (st, o)
                })
                .collect();
            // the shards together hold the unsharded state, no more
            assert_eq!(shards.iter().map(|(_, o)| o.state_bytes()).sum::<i64>(), one.state_bytes(), "{kind:?}");
            tch::manual_seed(5);
            for step in 0..3 {
                let g = Tensor::randn([whole.numel], (Kind::Float, Device::Cpu));
                whole.grad.copy_(&g);
                one.step_scaled(&mut whole, 1e-2, 0.5);
                for (st, o) in &mut shards {
                    st.grad.copy_(&g);
                    o.step_scaled(st, 1e-2, 0.5);
                }
                for ((st, _), &(a, b)) in shards.iter().zip(&regions) {
                    let err = (st.master.narrow(0, a, b - a) - whole.master.narrow(0, a, b - a)).abs().max().double_value(&[]);
                    assert!(err < 1e-6, "{kind:?} step {step}: region {a}..{b} differs by {err}");
                }
                // what the weights are after the all-gather
                for (st, _) in &mut shards {
                    tch::no_grad(|| st.master.copy_(&whole.master));
                }
            }
            // the widened shards sum to the unsharded state, name by name
            let mut sum: BTreeMap<String, Tensor> = BTreeMap::new();
            for (st, o) in &shards {
                for (n, t) in o.widened(st).state_tensors(st) {
                    let prev = sum.remove(&n);
                    sum.insert(n, prev.map_or(t.copy(), |p| p + t));
                }
            }
            for (n, t) in one.state_tensors(&whole) {
                let err = (&sum[&n] - &t).abs().max().double_value(&[]);
                assert!(err < 1e-6, "{kind:?} {n}: {err}");
            }
        }
    }

    #[test]
    fn clip_scales_to_max_norm() {
        let mut g = Tensor::from_slice(&[3.0f32, 4.0]);
        let n = clip_grad_norm(&mut g, 1.0);
        assert!((n.double_value(&[]) - 5.0).abs() < 1e-6);
        assert!((g.norm().double_value(&[]) - 1.0).abs() < 1e-5);
    }
}
