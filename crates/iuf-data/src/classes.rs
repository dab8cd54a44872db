//! The fixed class lists of MVTec AD and VisA (ALGORITHM.md section 1) and the class ordering rule.

/// MVTec AD's 15 classes in the fixed (alphabetical) order the protocols use.
pub const MVTEC_AD: [&str; 15] = [
    "bottle",
    "cable",
    "capsule",
    "carpet",
    "grid",
    "hazelnut",
    "leather",
    "metal_nut",
    "pill",
    "screw",
    "tile",
    "toothbrush",
    "transistor",
    "wood",
    "zipper",
];

/// VisA's 12 classes in the fixed (alphabetical) order the protocols use.
pub const VISA: [&str; 12] = [
    "candle",
    "capsules",
    "cashew",
    "chewinggum",
    "fryum",
    "macaroni1",
    "macaroni2",
    "pcb1",
    "pcb2",
    "pcb3",
    "pcb4",
    "pipe_fryum",
];

/// Sorts class names: in the fixed order of MVTec AD or VisA when every name belongs to that list,
/// otherwise alphabetically (byte order), so that class ids never depend on the file system's order.
pub fn sort_classes(names: &mut [String]) {
    for list in [&MVTEC_AD[..], &VISA[..]] {
        let position = |n: &String| list.iter().position(|c| c == n);
        if names.iter().all(|n| position(n).is_some()) {
            names.sort_by_key(|n| position(n));
            return;
        }
    }
    names.sort();
}

/// True when `names` holds exactly the classes of `list`, in any order.
pub fn is_full_list(names: &[String], list: &[&str]) -> bool {
    names.len() == list.len() && list.iter().all(|c| names.iter().any(|n| n == c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_lists_are_sorted_and_unique() {
        for list in [&MVTEC_AD[..], &VISA[..]] {
            let mut sorted = list.to_vec();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted, list);
        }
    }

    #[test]
    fn sort_uses_known_order_then_alphabetical() {
        let mut known = vec!["zipper".to_string(), "bottle".into(), "metal_nut".into()];
        sort_classes(&mut known);
        assert_eq!(known, ["bottle", "metal_nut", "zipper"]);
        let mut mixed = vec![
            "tire".to_string(),
            "pill".into(),
            "bottle".into(),
            "magnetic_tile".into(),
        ];
        sort_classes(&mut mixed);
        assert_eq!(mixed, ["bottle", "magnetic_tile", "pill", "tire"]);
    }

    #[test]
    fn full_list_detection() {
        let all: Vec<String> = VISA.iter().rev().map(|s| s.to_string()).collect();
        assert!(is_full_list(&all, &VISA));
        assert!(!is_full_list(&all[1..], &VISA));
        assert!(!is_full_list(&all, &MVTEC_AD));
    }
}
