//! The demo federation's public texts: its nodes' sharing agreements (`configs/policies/`),
//! embedded once for the two things that run the federation in process, the offline demo and
//! the simulator. No keys here: the demo's keys stay behind the `demo` feature.

/// The demo sharing policies: (node, partner, policy file).
pub const POLICIES: [(&str, &str, &str); 6] = [
    ("IT-DCSA", "ES-UDYCO", include_str!("../configs/policies/IT-DCSA/ES-UDYCO.toml")),
    ("IT-DCSA", "CO-DIJIN", include_str!("../configs/policies/IT-DCSA/CO-DIJIN.toml")),
    ("ES-UDYCO", "IT-DCSA", include_str!("../configs/policies/ES-UDYCO/IT-DCSA.toml")),
    ("ES-UDYCO", "CO-DIJIN", include_str!("../configs/policies/ES-UDYCO/CO-DIJIN.toml")),
    ("CO-DIJIN", "IT-DCSA", include_str!("../configs/policies/CO-DIJIN/IT-DCSA.toml")),
    ("CO-DIJIN", "ES-UDYCO", include_str!("../configs/policies/CO-DIJIN/ES-UDYCO.toml")),
];
