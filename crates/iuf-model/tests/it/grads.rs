//! Every trainable tensor receives a gradient in a training step (ALGORITHM.md: candle's fast
//! layer norm / softmax have no backward, so this guards the whole network).

use crate::build;
use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use iuf_model::{IufModel, Mode, ModelConfig, OasaMode};
use rand::rngs::StdRng;
use rand::SeedableRng;

const B: usize = 3;
const C: usize = 16;
const K: usize = 4;

fn setup(cfg: &ModelConfig) -> (VarMap, IufModel, Tensor, Tensor) {
    let dev = Device::Cpu;
    let (varmap, model) = build(cfg);
    let mut rng = StdRng::seed_from_u64(11);
    let x = Tensor::from_vec(
        (0..B * C * 196)
            .map(|_| rand::Rng::gen::<f32>(&mut rng))
            .collect::<Vec<_>>(),
        (B, C, 14, 14),
        &dev,
    )
    .unwrap();
    let labels = Tensor::new(&[0u32, 2, 3], &dev).unwrap();
    (varmap, model, x, labels)
}

/// Gradient norms of every variable after one training step on `loss_of(output)`.
fn grad_norms(
    cfg: &ModelConfig,
    loss_of: impl Fn(&iuf_model::ModelOutput, &Tensor, &Tensor) -> Tensor,
) -> Vec<(String, Option<f32>)> {
    let (varmap, model, x, labels) = setup(cfg);
    let mut rng = StdRng::seed_from_u64(5);
    let out = model.forward(&x, &mut Mode::Train(&mut rng)).unwrap();
    let grads = loss_of(&out, &x, &labels).backward().unwrap();
    let data = varmap.data().lock().unwrap();
    let mut norms: Vec<_> = data
        .iter()
        .map(|(name, var)| {
            let g = grads.get(var.as_tensor()).map(|g| {
                g.sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .sqrt()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            });
            (name.clone(), g)
        })
        .collect();
    norms.sort_by(|a, b| a.0.cmp(&b.0));
    norms
}

fn rec_plus_ce(out: &iuf_model::ModelOutput, x: &Tensor, labels: &Tensor) -> Tensor {
    let rec = (&out.feature_rec - x)
        .unwrap()
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap();
    let ce = candle_nn::loss::cross_entropy(&out.logits, labels).unwrap();
    (rec + ce).unwrap()
}

/// Every parameter is reached by the backward pass with a finite gradient, non-zero except for
/// the key-projection biases: adding `q . b_k` to every score of a query leaves its softmax
/// unchanged, so their exact gradient is 0 in any softmax attention (PyTorch's too); they get
/// rounding noise only, checked to be tiny next to the other gradients.
fn assert_all_nonzero(norms: &[(String, Option<f32>)]) {
    let missing: Vec<_> = norms
        .iter()
        .filter(|(_, g)| !g.is_some_and(f32::is_finite))
        .collect();
    assert!(
        missing.is_empty(),
        "parameters without a finite gradient: {missing:?}"
    );
    let (key_bias, others): (Vec<_>, Vec<_>) = norms
        .iter()
        .map(|(n, g)| (n, g.unwrap()))
        .partition(|(n, _)| n.ends_with("k_proj.bias"));
    let zero: Vec<_> = others.iter().filter(|(_, g)| *g <= 0.0).collect();
    assert!(zero.is_empty(), "parameters with a zero gradient: {zero:?}");
    let smallest = others.iter().map(|(_, g)| *g).fold(f32::INFINITY, f32::min);
    for (n, g) in key_bias {
        assert!(
            g < 1e-3 * smallest,
            "{n}: gradient {g} should vanish (smallest other {smallest})"
        );
    }
}

#[test]
fn every_parameter_gets_a_gradient_with_oasa_and_mask() {
    let mut cfg = ModelConfig::tiny(C, K);
    cfg.transformer.neighbor_mask = Some([7, 7]);
    let norms = grad_norms(&cfg, rec_plus_ce);
    // 2 encoder layers x 16 + 2 decoder layers x 27 + input/output proj 4 + pos 2 + LN_dec 2,
    // discriminator stem 2 + 2 blocks x 16 + norm 2 + head 4.
    assert_eq!(
        norms.len(),
        32 + 54 + 4 + 2 + 2 + 2 + 32 + 2 + 4,
        "{norms:?}"
    );
    assert_all_nonzero(&norms);
}

#[test]
fn every_parameter_gets_a_gradient_without_oasa() {
    let mut cfg = ModelConfig::tiny(C, K);
    cfg.oasa = OasaMode::Off;
    assert_all_nonzero(&grad_norms(&cfg, rec_plus_ce));
}

#[test]
fn reconstruction_loss_does_not_train_the_discriminator() {
    // Section 4.2: Z_l is detached before it multiplies the encoder queries.
    let cfg = ModelConfig::tiny(C, K);
    let norms = grad_norms(&cfg, |out, x, _| {
        (&out.feature_rec - x)
            .unwrap()
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap()
    });
    for (name, g) in &norms {
        if name.starts_with("discriminator.") {
            assert!(
                g.is_none_or(|v| v == 0.0),
                "{name} got gradient {g:?} from L_rec"
            );
        } else {
            let reached = g.is_some_and(|v| v > 0.0 || name.ends_with("k_proj.bias"));
            assert!(reached, "{name} got no gradient from L_rec");
        }
    }
}
