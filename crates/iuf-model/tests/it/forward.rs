//! Forward-pass behaviour: shapes, determinism, seeded training noise, batch independence, OASA,
//! input checks and the initialisation of section 3.7.

use crate::build;
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use iuf_model::{
    DiscriminatorInput, IufModel, Mode, ModelConfig, ModelError, OasaMode, Transformer,
};
use rand::rngs::StdRng;
use rand::SeedableRng;

const C: usize = 16;
const K: usize = 3;

fn input(b: usize) -> Tensor {
    Tensor::rand(0f32, 2f32, (b, C, 14, 14), &Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    values(a)
        .iter()
        .zip(values(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn outputs_have_the_documented_shapes() {
    let cfg = ModelConfig::tiny(C, K);
    let (varmap, model) = build(&cfg);
    let out = model.forward(&input(2), &mut Mode::Eval).unwrap();
    assert_eq!(out.feature_rec.dims(), &[2, C, 14, 14]);
    assert_eq!(out.pred.dims(), &[2, 1, 14, 14]);
    assert_eq!(out.logits.dims(), &[2, K]);
    assert_eq!(out.encoder.dims(), &[2, 196, 32]);
    assert_eq!(out.decoder_layers.len(), 2);
    assert_eq!(out.intermediate.len(), 1);
    assert_eq!(values(&out.intermediate[0]), values(&out.decoder_layers[0]));
    let names = model.constrained_layers();
    assert_eq!(
        names,
        [
            "transformer.encoder.layers.0.linear2",
            "transformer.encoder.layers.1.linear2",
            "transformer.decoder.layers.0.linear2",
            "transformer.decoder.layers.1.linear2",
        ]
    );
    assert_eq!(out.ffn_outputs.len(), names.len());
    let data = varmap.data().lock().unwrap();
    for (name, f) in names.iter().zip(&out.ffn_outputs) {
        assert_eq!(f.dims(), &[2, 196, 32]);
        assert_eq!(data[&format!("{name}.weight")].dims(), &[32, 64]);
        assert_eq!(data[&format!("{name}.bias")].dims(), &[32]);
    }
}

#[test]
fn pred_is_the_channel_l2_distance() {
    let (_, model) = build(&ModelConfig::tiny(C, K));
    let x = input(2);
    let out = model.forward(&x, &mut Mode::Eval).unwrap();
    let rec = values(&out.feature_rec);
    let xs = values(&x);
    let pred = values(&out.pred);
    for b in 0..2 {
        for t in 0..196 {
            let s: f32 = (0..C)
                .map(|c| {
                    let i = (b * C + c) * 196 + t;
                    (rec[i] - xs[i]).powi(2)
                })
                .sum();
            assert!((s.sqrt() - pred[b * 196 + t]).abs() < 1e-5);
        }
    }
}

#[test]
fn eval_is_deterministic_and_training_noise_follows_the_seed() {
    let (_, model) = build(&ModelConfig::tiny(C, K));
    let x = input(2);
    let e1 = model.forward(&x, &mut Mode::Eval).unwrap().feature_rec;
    let e2 = model.forward(&x, &mut Mode::Eval).unwrap().feature_rec;
    assert_eq!(values(&e1), values(&e2));
    let train = |seed| {
        let mut rng = StdRng::seed_from_u64(seed);
        model
            .forward(&x, &mut Mode::Train(&mut rng))
            .unwrap()
            .feature_rec
    };
    let (t1, t2, t3) = (train(1), train(1), train(2));
    assert_eq!(values(&t1), values(&t2));
    assert!(max_diff(&t1, &t3) > 1e-3);
    assert!(max_diff(&t1, &e1) > 1e-3);
}

#[test]
fn images_of_a_batch_do_not_interact() {
    let mut cfg = ModelConfig::tiny(C, K);
    cfg.transformer.neighbor_mask = Some([7, 7]);
    let (_, model) = build(&cfg);
    let x = input(3);
    let all = model.forward(&x, &mut Mode::Eval).unwrap();
    for b in 0..3 {
        let one = model
            .forward(&x.narrow(0, b, 1).unwrap(), &mut Mode::Eval)
            .unwrap();
        let rec_b = all.feature_rec.narrow(0, b, 1).unwrap();
        assert!(max_diff(&one.feature_rec, &rec_b) < 1e-5);
        let logits_b = all.logits.narrow(0, b, 1).unwrap();
        assert!(max_diff(&one.logits, &logits_b) < 1e-5);
    }
}

#[test]
fn oasa_conditions_the_reconstruction_on_the_discriminator() {
    let x = input(2);
    // OASA off: the reconstruction is plain UniAD on the same weights.
    let mut cfg = ModelConfig::tiny(C, K);
    cfg.oasa = OasaMode::Off;
    let (varmap, model) = build(&cfg);
    let off = model.forward(&x, &mut Mode::Eval).unwrap();
    let unconditioned = model.transformer().forward(&x, &mut Mode::Eval).unwrap();
    assert_eq!(values(&off.feature_rec), values(&unconditioned.feature_rec));
    // OASA on with the same weights: the discriminator features multiply the queries.
    cfg.oasa = OasaMode::On;
    let on_model = IufModel::new(
        &cfg,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let on = on_model.forward(&x, &mut Mode::Eval).unwrap();
    assert!(max_diff(&on.feature_rec, &off.feature_rec) > 1e-4);
    let disc = on_model
        .discriminator()
        .forward(&x.flatten_from(2).unwrap().transpose(1, 2).unwrap())
        .unwrap();
    let manual = on_model
        .transformer()
        .forward_with_cond(&x, Some(&disc.features), &mut Mode::Eval)
        .unwrap();
    assert!(max_diff(&on.feature_rec, &manual.feature_rec) < 1e-6);
}

#[test]
fn image_patch_discriminator_needs_the_image() {
    let mut cfg = ModelConfig::tiny(C, K);
    cfg.discriminator.input = DiscriminatorInput::ImagePatches { patch_size: 16 };
    let (_, model) = build(&cfg);
    let x = input(2);
    let err = model.forward(&x, &mut Mode::Eval).unwrap_err();
    assert!(
        matches!(err, ModelError::Input { ref name, .. } if name == "image"),
        "{err}"
    );
    let image = Tensor::rand(-1f32, 1f32, (2, 3, 224, 224), &Device::Cpu).unwrap();
    let out = model
        .forward_with_image(&x, &image, &mut Mode::Eval)
        .unwrap();
    assert_eq!(out.logits.dims(), &[2, K]);
    let small = Tensor::zeros((2, 3, 200, 224), DType::F32, &Device::Cpu).unwrap();
    assert!(model
        .forward_with_image(&x, &small, &mut Mode::Eval)
        .is_err());
}

#[test]
fn wrong_input_shapes_are_reported() {
    let (_, model) = build(&ModelConfig::tiny(C, K));
    let x = Tensor::zeros((2, C + 1, 14, 14), DType::F32, &Device::Cpu).unwrap();
    let err = model.forward(&x, &mut Mode::Eval).unwrap_err().to_string();
    assert!(
        err.contains("feature_align") && err.contains("[2, 17, 14, 14]"),
        "{err}"
    );
    let cfg = ModelConfig::tiny(C, K);
    let t = Transformer::new(
        &cfg.transformer,
        VarBuilder::from_varmap(&VarMap::new(), DType::F32, &Device::Cpu),
    )
    .unwrap();
    let cond = vec![Tensor::zeros((2, 196, 32), DType::F32, &Device::Cpu).unwrap()];
    let err = t
        .forward_with_cond(&input(2), Some(&cond), &mut Mode::Eval)
        .unwrap_err()
        .to_string();
    assert!(err.contains("cond"), "{err}");
}

#[test]
fn initialisation_follows_section_3_7() {
    let cfg = ModelConfig::paper(272, 15);
    let (varmap, _) = build(&cfg);
    let data = varmap.data().lock().unwrap();
    let stats = |name: &str| {
        let v = values(data[name].as_tensor());
        let n = v.len() as f32;
        let mean = v.iter().sum::<f32>() / n;
        let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / n).sqrt();
        let (lo, hi) = v
            .iter()
            .fold((f32::MAX, f32::MIN), |(a, b), &x| (a.min(x), b.max(x)));
        (mean, std, lo, hi)
    };
    // Position tables U[0, 1).
    let (mean, _, lo, hi) = stats("pos_embed.row_embed.weight");
    assert!(lo >= 0.0 && hi < 1.0 && (mean - 0.5).abs() < 0.1);
    // Query tables N(0, 1).
    let (mean, std, _, _) = stats("transformer.decoder.layers.0.learned_embed.weight");
    assert!(
        mean.abs() < 0.02 && (std - 1.0).abs() < 0.02,
        "{mean} {std}"
    );
    // Xavier-uniform: bound sqrt(6 / (fan_in + fan_out)), std bound / sqrt(3).
    let (_, std, lo, hi) = stats("transformer.encoder.layers.0.linear1.weight");
    let bound = (6.0f32 / (256.0 + 1024.0)).sqrt();
    assert!(lo >= -bound && hi <= bound && (std - bound / 3f32.sqrt()).abs() < 0.02 * bound);
    // Packed q|k|v bound of PyTorch's in_proj_weight [3D, D].
    let (_, _, lo, hi) = stats("transformer.encoder.layers.0.self_attn.q_proj.weight");
    let bound = (6.0f32 / (256.0 + 768.0)).sqrt();
    assert!(lo >= -bound && hi <= bound && hi > 0.9 * bound);
    for (name, var) in data.iter() {
        let v = values(var.as_tensor());
        if name.ends_with(".bias") {
            assert!(v.iter().all(|&x| x == 0.0), "{name} not zero");
        } else if name.contains("norm") {
            assert!(v.iter().all(|&x| x == 1.0), "{name} not one");
        }
    }
}
