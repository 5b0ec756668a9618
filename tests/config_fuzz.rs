//! Property tests: the configuration loader never panics, whatever the input,
//! and always answers with a valid config or located problems.

use std::path::Path;

use proptest::prelude::*;

const VALID: &str = include_str!("../config/nat-wrr.toml");

fn check(text: &str) {
    match vipd::config::parse(text, Path::new("fuzz.toml")) {
        // An accepted config never holds a dangling reference.
        Ok(c) => {
            for l in &c.listeners {
                if let Some(p) = &l.pool {
                    assert!(
                        c.pool(p).is_some(),
                        "listener {} names missing pool {p}",
                        l.name
                    );
                }
            }
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.starts_with("fuzz.toml: "), "{msg}");
            assert!(!e.problems().is_empty());
            for p in e.problems() {
                assert!(!p.fix.is_empty(), "a problem without a fix: {p}");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in ".{0,400}") {
        check(&text);
    }

    #[test]
    fn a_valid_file_with_bytes_replaced_never_panics(
        edits in proptest::collection::vec((0usize..2000, any::<char>()), 1..8)
    ) {
        let mut chars: Vec<char> = VALID.chars().collect();
        for (pos, ch) in edits {
            let i = pos % chars.len();
            chars[i] = ch;
        }
        check(&chars.into_iter().collect::<String>());
    }

    #[test]
    fn a_valid_file_with_lines_dropped_never_panics(drop_mask in any::<u64>()) {
        let text: String = VALID
            .lines()
            .enumerate()
            .filter(|(i, _)| drop_mask & (1 << (i % 64)) == 0)
            .map(|(_, l)| format!("{l}\n"))
            .collect();
        check(&text);
    }
}
