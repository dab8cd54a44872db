//! The demo classes: a woven fabric (textured surface), a metal washer on a dark background (object
//! with position/rotation jitter) and a perforated plate (regular pattern), each with four defect
//! kinds whose masks are the pixels the defect covers by at least half.
//!
//! Each class draws its defect-free layers and alters them per defect kind in its own file
//! (`fabric`, `washer`, `mesh`); `defects` holds the defect kinds and the defect painting they share,
//! `layers` the per-pixel helpers. This file picks the class and redraws defects that landed nowhere.
mod defects;
mod fabric;
mod layers;
mod mesh;
mod washer;

use rand::rngs::StdRng;

use super::paint::Rgb;
pub(crate) use defects::DefectKind;
use fabric::Fabric;
use mesh::Mesh;
use washer::Washer;

/// The visually different demo classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scene {
    Fabric,
    Mesh,
    Washer,
}

impl Scene {
    /// Alphabetical, as `DatasetRoot` lists them.
    pub const ALL: [Scene; 3] = [Scene::Fabric, Scene::Mesh, Scene::Washer];

    pub fn name(self) -> &'static str {
        match self {
            Scene::Fabric => "fabric",
            Scene::Mesh => "mesh",
            Scene::Washer => "washer",
        }
    }
}

pub(crate) struct Rendered {
    pub color: Vec<Rgb>,
    /// Defect pixels, row-major; `None` for normal images.
    pub mask: Option<Vec<bool>>,
}

/// A defect must cover at least this many pixels (at 256x256) to count; otherwise it is redrawn.
const MIN_DEFECT_PIXELS: f32 = 24.0;

pub(crate) fn render(
    scene: Scene,
    rng: &mut StdRng,
    size: usize,
    defect: Option<DefectKind>,
) -> Rendered {
    let base = match scene {
        Scene::Fabric => Base::Fabric(Fabric::draw(rng, size)),
        Scene::Mesh => Base::Mesh(Mesh::draw(rng, size)),
        Scene::Washer => Base::Washer(Washer::draw(rng, size)),
    };
    let Some(kind) = defect else {
        return Rendered {
            color: base.clean(),
            mask: None,
        };
    };
    let min_pixels = (MIN_DEFECT_PIXELS * (size * size) as f32 / 65536.0).max(4.0) as usize;
    // Redraw a defect that landed (almost) nowhere visible; the RNG stream keeps it deterministic.
    let mut last = None;
    for _ in 0..16 {
        let drawn = base.defect(rng, kind);
        let count = drawn.1.iter().filter(|&&m| m).count();
        if count >= min_pixels {
            return Rendered {
                color: drawn.0,
                mask: Some(drawn.1),
            };
        }
        last = Some(drawn);
    }
    let (color, mask) = last.unwrap_or_else(|| (base.clean(), vec![false; size * size]));
    Rendered {
        color,
        mask: Some(mask),
    }
}

/// Per-class scene state: the defect-free layers, and how each defect kind alters them.
enum Base {
    Fabric(Fabric),
    Mesh(Mesh),
    Washer(Washer),
}

impl Base {
    fn clean(&self) -> Vec<Rgb> {
        match self {
            Base::Fabric(f) => f.clean(),
            Base::Mesh(m) => m.clean(),
            Base::Washer(w) => w.clean(),
        }
    }

    fn defect(&self, rng: &mut StdRng, kind: DefectKind) -> (Vec<Rgb>, Vec<bool>) {
        match self {
            Base::Fabric(f) => f.defect(rng, kind),
            Base::Mesh(m) => m.defect(rng, kind),
            Base::Washer(w) => w.defect(rng, kind),
        }
    }
}
