//! All parameters live in one flat fp32 buffer (the master weights). Each parameter is a view of
//! it under its global name, so an optimizer step, the gradient-norm clip and a checkpoint touch
//! a handful of large tensors instead of hundreds of small ones.
//!
//! Layout: parameters are grouped, each group contiguous, in the order of [`ParamGroup`]:
//! hidden matrices first (Muon's domain), then other decayed tensors (embeddings, router), then
//! gains and biases (no weight decay). An optimizer therefore works on two or three ranges.
//!
//! Compute weights: with fp32 compute the autograd leaves are views of the master buffer itself;
//! with bf16/fp16 compute they are views of a second flat buffer in that dtype, refreshed from the
//! master after every step with one cast. Gradients land on the leaves and are gathered into a flat
//! fp32 gradient buffer with one `cat` per micro-batch.
//!
//! Linear layers multiply through [`ParamStore::linear`] and [`ParamStore::expert_matmul`], so
//! that an exported model (8-bit weights, `quantize/`) or a calibration pass recording
//! activations runs the model's own forward: a [`Linears`] set on the store takes over the
//! weights it names, and without one they are the plain fp32/bf16 products, op for op.

use crate::rng::Rng;
use tch::{Device, Kind, Tensor};

/// Linear layers computed otherwise than from the store's weights: 8-bit weights, or a
/// recorder of the activations that reach them. Set on a store with
/// [`ParamStore::set_linears`]; inference only (what it returns is not differentiated).
pub trait Linears {
    /// Whether it takes over the weight `w` (a bank of experts then runs expert by expert).
    fn replaces(&self, w: ParamId) -> bool;
    /// `x W^T + b` for the weight `w` [N, K] and input x [.., K], or `None` to leave it to the
    /// store's weights.
    fn linear(&self, p: &ParamStore, x: &Tensor, w: ParamId, b: Option<ParamId>) -> Option<Tensor>;
    /// `x[e] W[e] + b[e]` for a bank of experts `w` [X, K, N] and input x [X, C, K], or `None`.
    fn expert_matmul(&self, p: &ParamStore, x: &Tensor, w: ParamId, b: Option<ParamId>) -> Option<Tensor>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ParamGroup {
    /// 2-D (or batched 2-D, e.g. experts) weights inside blocks: decayed; Muon when chosen.
    Hidden,
    /// Embeddings, untied head, router: decayed, always AdamW.
    Embedding,
    /// Norm gains and biases: no decay, AdamW.
    Gain,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    Normal(f64),
    Zeros,
    Ones,
}

#[derive(Clone, Debug)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<i64>,
    pub group: ParamGroup,
    pub init: Init,
    /// Offset into the flat buffer (assigned by the store).
    pub offset: i64,
}

impl ParamSpec {
    pub fn numel(&self) -> i64 {
        self.shape.iter().product()
    }
}

/// Index of a parameter in its store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ParamId(pub usize);

/// Collects parameter declarations while a model is built.
#[derive(Default)]
pub struct ParamBuilder {
    specs: Vec<ParamSpec>,
}

impl ParamBuilder {
    pub fn add(&mut self, name: impl Into<String>, shape: &[i64], group: ParamGroup, init: Init) -> ParamId {
        let name = name.into();
        assert!(!self.specs.iter().any(|s| s.name == name), "duplicate parameter {name}");
        self.specs.push(ParamSpec { name, shape: shape.to_vec(), group, init, offset: 0 });
        ParamId(self.specs.len() - 1)
    }

    /// Parameters declared so far.
    pub fn numel(&self) -> i64 {
        self.specs.iter().map(ParamSpec::numel).sum()
    }

    /// The fingerprint of the parameters declared so far (see [`ParamStore::fingerprint`]),
    /// without allocating them.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.specs)
    }
}

/// Names and shapes, in name order, hashed.
fn fingerprint(specs: &[ParamSpec]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut specs: Vec<&ParamSpec> = specs.iter().collect();
    specs.sort_by(|a, b| a.name.cmp(&b.name));
    for s in specs {
        h.update(format!("{}:{:?};", s.name, s.shape));
    }
    hex::encode(&h.finalize()[..16])
}

pub struct ParamStore {
    pub specs: Vec<ParamSpec>,
    pub device: Device,
    pub compute_kind: Kind,
    /// Flat fp32 master weights.
    pub master: Tensor,
    /// Flat compute-dtype weights (shares storage with `master` when compute is fp32).
    compute: Tensor,
    /// Autograd leaves, views of `compute`.
    leaves: Vec<Tensor>,
    /// Parameter indices in buffer order (by offset).
    by_offset: Vec<usize>,
    /// Flat fp32 gradient accumulator.
    pub grad: Tensor,
    /// End offsets of the Hidden and Embedding groups (Gain ends at `numel`).
    pub hidden_end: i64,
    pub embedding_end: i64,
    pub numel: i64,
    /// Linear layers computed otherwise (an int8 export, a calibration recorder); `None` in
    /// training.
    linears: Option<Box<dyn Linears + Send>>,
}

impl ParamStore {
    /// Lays the parameters out, initialises them from `rng` on the CPU (so the same seed gives the
    /// same weights on every device) and moves them to `device`.
    pub fn new(builder: ParamBuilder, rng: &mut Rng, device: Device, compute_kind: Kind) -> Self {
        let mut specs = builder.specs;
        // Stable sort keeps model order within a group.
        let mut order: Vec<usize> = (0..specs.len()).collect();
        order.sort_by_key(|&i| specs[i].group);
        let mut offset = 0;
        let (mut hidden_end, mut embedding_end) = (0, 0);
        for &i in &order {
            specs[i].offset = offset;
            offset += specs[i].numel();
            match specs[i].group {
                ParamGroup::Hidden => {
                    hidden_end = offset;
                    embedding_end = offset;
                }
                ParamGroup::Embedding => embedding_end = offset,
                ParamGroup::Gain => {}
            }
        }
        let numel = offset;
        let mut by_offset: Vec<usize> = (0..specs.len()).collect();
        by_offset.sort_by_key(|&i| specs[i].offset);
        // Initialise in declaration order so that adding a group never changes other weights.
        let mut host = vec![0f32; numel as usize];
        for s in &specs {
            let dst = &mut host[s.offset as usize..(s.offset + s.numel()) as usize];
            match s.init {
                Init::Normal(std) => rng.fill_normal(dst, std),
                Init::Zeros => dst.fill(0.0),
                Init::Ones => dst.fill(1.0),
            }
        }
        let master = Tensor::from_slice(&host).to_device(device);
        let mut store = Self {
            specs,
            device,
            compute_kind,
            compute: master.shallow_clone(),
            master,
            leaves: Vec::new(),
            by_offset,
            grad: Tensor::zeros([numel], (Kind::Float, device)),
            hidden_end,
            embedding_end,
            numel,
            linears: None,
        };
        store.build_leaves();
        store
    }

    fn build_leaves(&mut self) {
        self.compute = if self.compute_kind == Kind::Float { self.master.shallow_clone() } else { self.master.to_kind(self.compute_kind) };
        self.leaves = self
            .specs
            .iter()
            .map(|s| self.compute.narrow(0, s.offset, s.numel()).view(s.shape.as_slice()).detach().set_requires_grad(true))
            .collect();
    }

    /// The compute-dtype tensor for a parameter, tracked by autograd.
    pub fn get(&self, id: ParamId) -> &Tensor {
        &self.leaves[id.0]
    }

    /// `x W^T + b` for the linear layer with weight `w` [N, K]: the store's weights, unless a
    /// [`Linears`] takes this one over.
    pub fn linear(&self, x: &Tensor, w: ParamId, b: Option<ParamId>) -> Tensor {
        if let Some(y) = self.linears.as_ref().and_then(|l| l.linear(self, x, w, b)) {
            return y;
        }
        x.linear(self.get(w), b.map(|i| self.get(i)))
    }

    /// `x[e] W[e] + b[e]` for a bank of experts: x [X, C, K], `w` [X, K, N], `b` [X, N] →
    /// [X, C, N]; the store's weights unless a [`Linears`] takes `w` over.
    pub fn expert_matmul(&self, x: &Tensor, w: ParamId, b: Option<ParamId>) -> Tensor {
        if let Some(y) = self.linears.as_ref().and_then(|l| l.expert_matmul(self, x, w, b)) {
            return y;
        }
        match b {
            Some(bi) => self.get(bi).unsqueeze(1).baddbmm(x, self.get(w), 1.0, 1.0),
            None => x.bmm(self.get(w)),
        }
    }

    /// Whether a [`Linears`] set on the store takes the weight `w` over.
    pub fn replaces(&self, w: ParamId) -> bool {
        self.linears.as_ref().is_some_and(|l| l.replaces(w))
    }

    /// Sets (or with `None` clears) the linear layers computed otherwise; returns those set
    /// before.
    pub fn set_linears(&mut self, linears: Option<Box<dyn Linears + Send>>) -> Option<Box<dyn Linears + Send>> {
        std::mem::replace(&mut self.linears, linears)
    }

    pub fn spec(&self, id: ParamId) -> &ParamSpec {
        &self.specs[id.0]
    }

    /// A view of the master weights of one parameter.
    pub fn master_view(&self, i: usize) -> Tensor {
        let s = &self.specs[i];
        self.master.narrow(0, s.offset, s.numel()).view(s.shape.as_slice())
    }

    /// Adds the leaves' gradients, times `scale`, to the flat fp32 gradient and clears them.
    pub fn accumulate_grads(&mut self, scale: f64) {
        let _guard = tch::no_grad_guard();
        let parts: Vec<Tensor> = self.by_offset.iter().map(|&i| self.flat_grad_part(i, self.leaves[i].grad())).collect();
        self.add_to_grad(&parts, scale, true);
        for leaf in &mut self.leaves {
            leaf.zero_grad();
        }
    }

    /// Differentiates `loss` with respect to every parameter and writes the gradients, times
    /// `scale`, into the flat fp32 gradient: replacing it, or added to it with `accumulate`.
    /// Autograd hands the gradients back instead of accumulating them on the leaves, so with fp32
    /// compute they go into the buffer with one `cat` and nothing is cleared afterwards. With
    /// `input` (a leaf the loss depends on: a pipeline stage's activations), also returns the
    /// loss's gradient with respect to it, unscaled, from the same backward pass.
    pub fn backward_into_grad(&mut self, loss: &Tensor, input: Option<&Tensor>, scale: f64, accumulate: bool) -> Option<Tensor> {
        let mut inputs: Vec<&Tensor> = self.by_offset.iter().map(|&i| &self.leaves[i]).collect();
        inputs.extend(input);
        let mut grads = Tensor::run_backward(&[loss], &inputs, false, false);
        let input_grad = input.and_then(|_| grads.pop());
        let _guard = tch::no_grad_guard();
        let parts: Vec<Tensor> = self.by_offset.iter().zip(grads).map(|(&i, g)| self.flat_grad_part(i, g)).collect();
        self.add_to_grad(&parts, scale, accumulate);
        input_grad
    }

    /// One parameter's gradient flattened (zeros where autograd produced none).
    fn flat_grad_part(&self, i: usize, g: Tensor) -> Tensor {
        if g.defined() { g.reshape([-1]) } else { Tensor::zeros([self.specs[i].numel()], (self.compute_kind, self.device)) }
    }

    /// `grad = [grad +] scale · cat(parts)`, where `parts` cover the buffer in order.
    fn add_to_grad(&mut self, parts: &[Tensor], scale: f64, accumulate: bool) {
        let direct = !accumulate && scale == 1.0 && self.compute_kind == Kind::Float;
        if direct {
            let _ = Tensor::cat_out(&self.grad, parts, 0);
            return;
        }
        let flat = Tensor::cat(parts, 0);
        let flat = if flat.kind() == Kind::Float { flat } else { flat.to_kind(Kind::Float) };
        let flat = if scale == 1.0 { flat } else { flat * scale };
        if accumulate {
            let _ = self.grad.g_add_(&flat);
        } else {
            self.grad.copy_(&flat);
        }
    }

    /// The flat gradient's global L2 norm (a 0-d fp32 tensor, no host sync): one BLAS dot
    /// product, one pass over the buffer.
    pub fn grad_norm(&self) -> Tensor {
        let _guard = tch::no_grad_guard();
        self.grad.dot(&self.grad).sqrt()
    }

    pub fn zero_grad(&mut self) {
        let _ = self.grad.zero_();
    }

    /// Refreshes the compute weights after the master weights changed.
    pub fn sync_compute(&mut self) {
        if self.compute_kind != Kind::Float {
            let _guard = tch::no_grad_guard();
            self.compute.copy_(&self.master);
        }
    }

    pub fn total_params(&self) -> i64 {
        self.numel
    }

    /// Names and shapes, the identity a checkpoint must match.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.specs)
    }

    pub fn find(&self, name: &str) -> Option<usize> {
        self.specs.iter().position(|s| s.name == name)
    }
}
