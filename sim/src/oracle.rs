//! The connectivity oracle: what a correct peer-to-peer stack must achieve between two NAT
//! behaviours, and a table of it.
//!
//! The reasoning lives in [`fog_core::pairing`] (so that fog-ice's punching strategy follows the
//! same routes); its model, rules and tests are documented there. This module re-exports it for
//! the simulator's scenarios and renders the tables of `sim/README.md`.

use std::fmt::Write as _;

pub use fog_core::pairing::{
    LearnAnchor, LearnOther, Method, Outcome, Pairing, ProbeBudget, RelayReason, Route, Who,
    oracle, pairing,
};

use crate::behaviour::Behaviour;

/// A Markdown table of [`oracle`] outcomes: one row per behaviour as side A, one column per
/// behaviour as side B, each cell a short label (see [`Outcome`]'s `Display`). Pipes in names are
/// escaped.
pub fn matrix(behaviours: &[(&str, Behaviour)], budget: &ProbeBudget) -> String {
    let escape = |name: &str| name.replace('|', "\\|");
    let mut out = String::from("| A \\ B |");
    for (name, _) in behaviours {
        // Writing to a String cannot fail.
        let _ = write!(out, " {} |", escape(name));
    }
    out.push_str("\n|---|");
    for _ in behaviours {
        out.push_str("---|");
    }
    out.push('\n');
    for (row, a) in behaviours {
        let _ = write!(out, "| **{}** |", escape(row));
        for (_, b) in behaviours {
            let _ = write!(out, " {} |", oracle(*a, *b, budget));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::behaviour::{Filtering, Mapping, PortPattern};

    const EIM: Mapping = Mapping::EndpointIndependent;
    const ADM: Mapping = Mapping::AddressDependent;
    const APDM: Mapping = Mapping::AddressAndPortDependent;
    const ADF: Filtering = Filtering::AddressDependent;
    const EIF: Filtering = Filtering::EndpointIndependent;
    const APDF: Filtering = Filtering::AddressAndPortDependent;
    const SEQ: PortPattern = PortPattern::Sequential { delta: 1 };
    const RANDOM: PortPattern = PortPattern::Random;
    const PRESERVED: PortPattern = PortPattern::Preserved;

    #[test]
    fn matrix_labels() {
        let rows = [
            ("full cone", Behaviour::nat(EIM, EIF, PRESERVED)),
            ("port-restricted", Behaviour::nat(EIM, APDF, PRESERVED)),
            ("sym seq", Behaviour::nat(APDM, APDF, SEQ)),
            ("sym random", Behaviour::nat(APDM, APDF, RANDOM)),
            ("a|b", Behaviour::UdpBlocked),
        ];
        let table = matrix(&rows, &ProbeBudget::default());
        for label in [
            "plain",
            "prflx",
            "| predict |",
            "predict both",
            "birthday 98%",
            "relay (one random)",
            "relay (both random)",
            "relay (no UDP)",
            "a\\|b",
        ] {
            assert!(table.contains(label), "{label} missing from\n{table}");
        }
        assert_eq!(table.lines().count(), rows.len() + 2);
        assert!(table.starts_with("| A \\ B | full cone |"));
    }

    /// The behaviours of the README's tables, whose text must stay what `matrix` prints.
    fn readme_tables() -> [Vec<(&'static str, Behaviour)>; 2] {
        [
            vec![
                ("open", Behaviour::Open),
                ("full cone", Behaviour::nat(EIM, EIF, PRESERVED)),
                ("restricted", Behaviour::nat(EIM, ADF, PRESERVED)),
                ("port-restr.", Behaviour::nat(EIM, APDF, PRESERVED)),
                ("fw APDF", Behaviour::Firewall { filtering: APDF }),
                ("ADM seq", Behaviour::nat(ADM, APDF, SEQ)),
                ("sym preserve", Behaviour::nat(APDM, APDF, PRESERVED)),
                ("sym seq", Behaviour::nat(APDM, APDF, SEQ)),
                ("sym random", Behaviour::nat(APDM, APDF, RANDOM)),
                ("UDP blocked", Behaviour::UdpBlocked),
            ],
            vec![
                ("port-restr.", Behaviour::nat(EIM, APDF, PRESERVED)),
                ("ADM+ADF rnd", Behaviour::nat(ADM, ADF, RANDOM)),
                ("ADM+APDF rnd", Behaviour::nat(ADM, APDF, RANDOM)),
                ("APDM+EIF rnd", Behaviour::nat(APDM, EIF, RANDOM)),
                ("APDM+ADF seq", Behaviour::nat(APDM, ADF, SEQ)),
                ("sym seq", Behaviour::nat(APDM, APDF, SEQ)),
                ("sym random", Behaviour::nat(APDM, APDF, RANDOM)),
            ],
        ]
    }

    #[test]
    fn readme_tables_are_current() {
        let readme = include_str!("../README.md");
        for rows in readme_tables() {
            let table = matrix(&rows, &ProbeBudget::default());
            assert!(
                readme.contains(&table),
                "README.md lacks this table:\n{table}"
            );
        }
    }
}
