//! AdamW with decoupled weight decay and global-norm gradient clipping, whose
//! moments can be saved and restored (candle-nn's AdamW keeps them private,
//! so a resumed run could not continue exactly).

use crate::error::Result;
use crate::kernels::with_values;
use candle_core::{backprop::GradStore, Tensor, Var};
use rayon::prelude::*;
use std::collections::BTreeMap;

/// Values per parallel task of the fused update and the gradient norm.
const CHUNK: usize = 1 << 14;

pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Steps taken (bias correction uses it).
    pub t: usize,
    m: BTreeMap<String, Var>,
    v: BTreeMap<String, Var>,
}

impl AdamW {
    pub fn new(
        params: &BTreeMap<String, Var>,
        beta1: f64,
        beta2: f64,
        eps: f64,
        wd: f64,
    ) -> Result<AdamW> {
        let zeros =
            |v: &Var| -> Result<Var> { Ok(Var::from_tensor(&v.as_tensor().zeros_like()?)?) };
        let mut m = BTreeMap::new();
        let mut s = BTreeMap::new();
        for (name, var) in params {
            m.insert(name.clone(), zeros(var)?);
            s.insert(name.clone(), zeros(var)?);
        }
        Ok(AdamW {
            beta1,
            beta2,
            eps,
            weight_decay: wd,
            t: 0,
            m,
            v: s,
        })
    }

    /// Global L2 norm of the gradients of `params`.
    pub fn grad_norm(params: &BTreeMap<String, Var>, grads: &GradStore) -> Result<f64> {
        let mut sum = 0f64;
        for var in params.values() {
            if let Some(g) = grads.get(var.as_tensor()) {
                sum += with_values(g, |g| {
                    Ok(g.par_chunks(CHUNK)
                        .map(|c| c.iter().map(|&x| (x * x) as f64).sum::<f64>())
                        .sum::<f64>())
                })?;
            }
        }
        Ok(sum.sqrt())
    }

    /// One update at learning rate `lr`, with gradients scaled by `scale`
    /// (clipping). Weight decay applies to matrices only, not to norms.
    pub fn step(
        &mut self,
        params: &BTreeMap<String, Var>,
        grads: &GradStore,
        lr: f64,
        scale: f64,
    ) -> Result<()> {
        self.t += 1;
        // In f32, as candle's tensor ops computed it before this was one
        // fused pass (those took a dozen single-threaded ops per parameter).
        let (b1, b2) = (self.beta1 as f32, self.beta2 as f32);
        let c1 = (1.0 - self.beta1.powi(self.t as i32)) as f32;
        let c2 = (1.0 - self.beta2.powi(self.t as i32)) as f32;
        let (eps, lr, scale) = (self.eps as f32, lr as f32, scale as f32);
        for (name, var) in params {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let p = var.as_tensor();
            let decay = if p.rank() >= 2 {
                1.0 - lr * self.weight_decay as f32
            } else {
                1.0
            };
            let (m, v) = (&self.m[name], &self.v[name]);
            let n = p.elem_count();
            let (mut p_new, mut m_new, mut v_new) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
            with_values(g, |g| {
                with_values(p, |p0| {
                    with_values(m.as_tensor(), |m0| {
                        with_values(v.as_tensor(), |v0| {
                            if [g.len(), m0.len(), v0.len()] != [n; 3] {
                                return Err(candle_core::Error::Msg(format!(
                                    "AdamW: {name} has {n} values, its gradient {} and moments {} and {}",
                                    g.len(),
                                    m0.len(),
                                    v0.len()
                                )));
                            }
                            p_new
                                .par_chunks_mut(CHUNK)
                                .zip(m_new.par_chunks_mut(CHUNK))
                                .zip(v_new.par_chunks_mut(CHUNK))
                                .enumerate()
                                .for_each(|(c, ((pn, mn), vn))| {
                                    let o = c * CHUNK;
                                    for i in 0..pn.len() {
                                        let gi = g[o + i] * scale;
                                        mn[i] = m0[o + i] * b1 + gi * (1.0 - b1);
                                        vn[i] = v0[o + i] * b2 + gi * gi * (1.0 - b2);
                                        let update = (mn[i] / c1) / ((vn[i] / c2).sqrt() + eps);
                                        pn[i] = p0[o + i] * decay - update * lr;
                                    }
                                });
                            Ok(())
                        })
                    })
                })
            })?;
            let (shape, dev) = (p.shape().clone(), p.device().clone());
            var.set(&Tensor::from_vec(p_new, shape.clone(), &dev)?)?;
            m.set(&Tensor::from_vec(m_new, shape.clone(), &dev)?)?;
            v.set(&Tensor::from_vec(v_new, shape, &dev)?)?;
        }
        Ok(())
    }

    /// The moments as `m.NAME` / `v.NAME` tensors.
    pub fn state(&self) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        for (k, v) in &self.m {
            out.insert(format!("m.{k}"), v.as_tensor().clone());
        }
        for (k, v) in &self.v {
            out.insert(format!("v.{k}"), v.as_tensor().clone());
        }
        out
    }

    /// Restores moments saved by [`AdamW::state`]; `t` is restored by the caller.
    pub fn load_state(&mut self, mut state: BTreeMap<String, Tensor>) -> Result<()> {
        for (prefix, map) in [("m", &self.m), ("v", &self.v)] {
            for (k, var) in map {
                let key = format!("{prefix}.{k}");
                let t = state.remove(&key).ok_or_else(|| {
                    crate::error::TrainError::BadShape(format!("optimizer state lacks {key}"))
                })?;
                if t.dims() != var.as_tensor().dims() {
                    return Err(crate::error::TrainError::BadShape(format!(
                        "optimizer state {key} has shape {:?}, expected {:?}",
                        t.dims(),
                        var.as_tensor().dims()
                    )));
                }
                var.set(&t)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// PyTorch's AdamW (decoupled decay, bias-corrected moments) in f64,
    /// with the gradient scaled by `scale` first, as clipping does.
    #[allow(clippy::too_many_arguments)]
    fn reference_step(
        p: &mut [f64],
        m: &mut [f64],
        v: &mut [f64],
        g: &[f64],
        t: i32,
        lr: f64,
        wd: f64,
        scale: f64,
    ) {
        let (b1, b2, eps) = (0.9, 0.99, 1e-8);
        for i in 0..p.len() {
            let gi = g[i] * scale;
            m[i] = b1 * m[i] + (1.0 - b1) * gi;
            v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
            let (mh, vh) = (m[i] / (1.0 - b1.powi(t)), v[i] / (1.0 - b2.powi(t)));
            p[i] = p[i] * (1.0 - lr * wd) - lr * mh / (vh.sqrt() + eps);
        }
    }

    /// The fused update (parallel chunks, values borrowed from the
    /// tensors) against the formula, over several steps, for a matrix
    /// (decayed) larger than one chunk and a vector (not decayed), and the
    /// gradient norm against its definition.
    #[test]
    fn fused_adamw_matches_the_formula() {
        let dev = Device::Cpu;
        let shapes: [(&str, Vec<usize>); 2] = [("w", vec![3, CHUNK / 2 + 7]), ("n", vec![5])];
        let mut params = BTreeMap::new();
        let mut want = BTreeMap::new();
        for (name, dims) in &shapes {
            let n: usize = dims.iter().product();
            let p0: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 70.0)
                .collect();
            let var =
                Var::from_tensor(&Tensor::from_vec(p0.clone(), dims.as_slice(), &dev).unwrap())
                    .unwrap();
            params.insert(name.to_string(), var);
            let p: Vec<f64> = p0.iter().map(|&x| x as f64).collect();
            want.insert(name.to_string(), (p, vec![0f64; n], vec![0f64; n]));
        }
        let (lr, wd, scale) = (1e-2, 0.1, 0.5);
        let mut opt = AdamW::new(&params, 0.9, 0.99, 1e-8, wd).unwrap();
        for step in 1..=3 {
            // A loss whose gradient differs per value and per step:
            // sum(c * p^2) -> 2 c p.
            let mut loss = Tensor::new(0f32, &dev).unwrap();
            let mut grads_f64 = BTreeMap::new();
            for (name, var) in &params {
                let n = var.as_tensor().elem_count();
                let c: Vec<f32> = (0..n).map(|i| ((i + step) % 7) as f32 - 3.0).collect();
                let ct = Tensor::from_vec(c.clone(), var.as_tensor().shape(), &dev).unwrap();
                let term = (var.as_tensor().sqr().unwrap() * &ct)
                    .unwrap()
                    .sum_all()
                    .unwrap();
                loss = (loss + term).unwrap();
                let p = var
                    .as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                let g: Vec<f64> = p
                    .iter()
                    .zip(&c)
                    .map(|(&p, &c)| 2.0 * c as f64 * p as f64)
                    .collect();
                grads_f64.insert(name.clone(), g);
            }
            let grads = loss.backward().unwrap();
            let norm = AdamW::grad_norm(&params, &grads).unwrap();
            let want_norm = grads_f64
                .values()
                .flatten()
                .map(|g| g * g)
                .sum::<f64>()
                .sqrt();
            assert!(
                (norm - want_norm).abs() <= 1e-5 * want_norm,
                "{norm} vs {want_norm}"
            );
            opt.step(&params, &grads, lr, scale).unwrap();
            for (name, var) in &params {
                let (p, m, v) = want.get_mut(name).unwrap();
                let w = if var.as_tensor().rank() >= 2 { wd } else { 0.0 };
                reference_step(p, m, v, &grads_f64[name], step as i32, lr, w, scale);
                let got = var
                    .as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                for (i, (&a, &b)) in got.iter().zip(p.iter()).enumerate() {
                    assert!(
                        (a as f64 - b).abs() <= 1e-5 * (1.0 + b.abs()),
                        "{name}[{i}] step {step}: {a} vs {b}"
                    );
                }
            }
        }
    }
}
