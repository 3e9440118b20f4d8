//! AdamW with decoupled weight decay and global-norm gradient clipping, whose
//! moments can be saved and restored (candle-nn's AdamW keeps them private,
//! so a resumed run could not continue exactly).

use crate::error::Result;
use candle_core::{backprop::GradStore, Tensor, Var};
use std::collections::BTreeMap;

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
                sum += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
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
        let c1 = 1.0 - self.beta1.powi(self.t as i32);
        let c2 = 1.0 - self.beta2.powi(self.t as i32);
        for (name, var) in params {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let g = if scale != 1.0 {
                (g * scale)?
            } else {
                g.clone()
            };
            let m = &self.m[name];
            let v = &self.v[name];
            let m_new = ((m.as_tensor() * self.beta1)? + (&g * (1.0 - self.beta1))?)?;
            let v_new = ((v.as_tensor() * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            let update = ((&m_new / c1)? / ((&v_new / c2)?.sqrt()? + self.eps)?)?;
            let decay = if var.as_tensor().rank() >= 2 {
                1.0 - lr * self.weight_decay
            } else {
                1.0
            };
            let p_new = ((var.as_tensor() * decay)? - (update * lr)?)?;
            var.set(&p_new)?;
            m.set(&m_new)?;
            v.set(&v_new)?;
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
