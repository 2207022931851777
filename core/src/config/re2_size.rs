//! An estimate of RE2's program size for a pattern: Envoy refuses a `safe_regex` whose compiled
//! program is larger than 100 instructions, and regex-lite has no such measure. The estimate
//! errs low, so vigil never refuses a regex Envoy accepts.

/// Envoy's default `re2.max_program_size.error_level`.
pub(super) const RE2_MAX_PROGRAM_SIZE: usize = 100;

/// RE2's program size for a pattern, estimated from below so that a regex Envoy accepts is never
/// refused: one instruction per literal byte and per character class, 8 per `.` (RE2's UTF-8
/// any-character), 2 per capturing group, one more per `*`, `+`, `?`, counted repetitions
/// expanded (`x{n,m}`: m copies and m - n alternations), the longest branch of an alternation
/// (RE2 factors common prefixes), nothing for anchors, adjacent repeats of the same atom merged
/// (RE2 turns `a*a*` into `a*`), and 4 for the unanchored search loop and match (1 when the
/// pattern starts with `^`). Calibrated against Envoy 1.36.2's messages.
pub(super) fn re2_program_size_estimate(pattern: &str) -> usize {
    let chars: Vec<char> = pattern.chars().collect();
    let dotall = pattern.contains("(?s");
    let mut at = 0;
    let body = re2_alternation(&chars, &mut at, dotall);
    body + if pattern.starts_with('^') { 1 } else { 4 }
}

fn re2_alternation(c: &[char], at: &mut usize, dotall: bool) -> usize {
    let mut best = re2_concat(c, at, dotall);
    while *at < c.len() && c[*at] == '|' {
        *at += 1;
        best = best.max(re2_concat(c, at, dotall));
    }
    best
}

fn re2_concat(c: &[char], at: &mut usize, dotall: bool) -> usize {
    let mut total = 0;
    let mut previous: Option<(String, bool)> = None;
    while *at < c.len() && c[*at] != '|' && c[*at] != ')' {
        let start = *at;
        let size = re2_atom(c, at, dotall);
        *at = (*at).min(c.len());
        let text: String = c[start..*at].iter().collect();
        let (size, quantified) = re2_quantifier(c, at, size);
        let merged = previous
            .as_ref()
            .is_some_and(|(t, q)| *t == text && (*q || quantified));
        if !merged {
            total += size;
        }
        previous = Some((text, quantified));
    }
    total
}

/// One atom: its size, `at` moved past it.
fn re2_atom(c: &[char], at: &mut usize, dotall: bool) -> usize {
    let ch = c[*at];
    *at += 1;
    match ch {
        '(' => {
            let mut capturing = true;
            if c.get(*at) == Some(&'?') {
                capturing = matches!(c.get(*at + 1), Some('P' | '<'));
                // Skip the group's header: `?:`, `?flags:`, `?flags)`, `?P<name>`, `?<name>`.
                while *at < c.len() && !matches!(c[*at], ':' | ')' | '>') {
                    *at += 1;
                }
                if c.get(*at) == Some(&')') {
                    *at += 1;
                    return 0; // a flags group
                }
                *at += 1;
            }
            let inner = re2_alternation(c, at, dotall);
            if c.get(*at) == Some(&')') {
                *at += 1;
            }
            inner + if capturing { 2 } else { 0 }
        }
        '[' => {
            // `[]a]` and `[^]a]` start with a literal `]`.
            if c.get(*at) == Some(&'^') {
                *at += 1;
            }
            if c.get(*at) == Some(&']') {
                *at += 1;
            }
            while *at < c.len() && c[*at] != ']' {
                if c[*at] == '\\' {
                    *at += 1;
                } else if c[*at] == '[' && c.get(*at + 1) == Some(&':') {
                    while *at < c.len() && !(c[*at] == ':' && c.get(*at + 1) == Some(&']')) {
                        *at += 1;
                    }
                    *at += 1;
                }
                *at += 1;
            }
            *at += 1;
            1
        }
        '.' => {
            if dotall {
                1
            } else {
                8
            }
        }
        '^' | '$' => 0,
        '\\' => {
            let Some(&e) = c.get(*at) else { return 0 };
            *at += 1;
            match e {
                'Q' => {
                    let mut n = 0;
                    while *at < c.len() && !(c[*at] == '\\' && c.get(*at + 1) == Some(&'E')) {
                        n += c[*at].len_utf8();
                        *at += 1;
                    }
                    *at = (*at + 2).min(c.len());
                    n
                }
                'p' | 'P' | 'x' if c.get(*at) == Some(&'{') => {
                    while *at < c.len() && c[*at] != '}' {
                        *at += 1;
                    }
                    *at += 1;
                    1
                }
                'p' | 'P' => {
                    *at += 1;
                    1
                }
                'x' => {
                    *at = (*at + 2).min(c.len());
                    1
                }
                'A' | 'z' | 'b' | 'B' => 0,
                _ => 1,
            }
        }
        other => other.len_utf8(),
    }
}

/// A quantifier after an atom of `size`: the quantified size and whether there was one.
fn re2_quantifier(c: &[char], at: &mut usize, size: usize) -> (usize, bool) {
    let result = match c.get(*at) {
        Some('*' | '+' | '?') => {
            *at += 1;
            (size + usize::from(size > 0), true)
        }
        Some('{') => {
            let close = c[*at..].iter().position(|&x| x == '}');
            let body: Option<String> = close.map(|n| c[*at + 1..*at + n].iter().collect());
            let bounds = body.as_deref().and_then(|b| {
                let (lo, hi) = match b.split_once(',') {
                    Some((lo, "")) => (lo.parse::<usize>().ok()?, None),
                    Some((lo, hi)) => (lo.parse::<usize>().ok()?, Some(hi.parse::<usize>().ok()?)),
                    None => {
                        let n = b.parse::<usize>().ok()?;
                        (n, Some(n))
                    }
                };
                Some((lo, hi))
            });
            match (bounds, close) {
                (Some((lo, hi)), Some(n)) => {
                    *at += n + 1;
                    let sized = match hi {
                        Some(hi) => {
                            hi.saturating_mul(size)
                                + if size > 0 { hi.saturating_sub(lo) } else { 0 }
                        }
                        None => lo.max(1).saturating_mul(size) + usize::from(size > 0),
                    };
                    (sized, true)
                }
                _ => return (size, false), // a literal `{`
            }
        }
        _ => return (size, false),
    };
    // A lazy `?` or possessive `+` after the quantifier.
    if matches!(c.get(*at), Some('?' | '+')) {
        *at += 1;
    }
    result
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::super::matchers::compile;
    use super::*;
    use crate::protojson::{Ctx, FieldPath};

    #[test]
    fn re2_program_size_estimates_match_envoys_verdicts() {
        // Sizes Envoy 1.36.2 reported (or accepted) for these patterns.
        let size = re2_program_size_estimate;
        assert_eq!(size(&format!("/{}", "a".repeat(96))), 101);
        assert_eq!(size(&format!("/{}", "a".repeat(95))), 100);
        assert_eq!(size(&format!("/({})", "a".repeat(94))), 101);
        assert_eq!(size("[a-z]{1,49}"), 101);
        assert_eq!(size("[a-z]{1,48}"), 99);
        assert_eq!(size("/[a-z]{1,200}"), 404);
        assert_eq!(size(&".".repeat(15)), 124);
        assert!(size(&format!("/{}", "a*".repeat(49))) <= 100, "a*a* is a*");
        assert!(size(&format!("^/{}$", "a".repeat(95))) <= 100);
        assert!(size(&format!("(?i)/{}", "a".repeat(96))) > 100);
        let alternatives: Vec<String> = (0..20)
            .map(|i| format!("ab{}", (b'a' + i) as char))
            .collect();
        assert!(
            size(&alternatives.join("|")) <= 100,
            "RE2 factors alternations"
        );
        assert!(size("/\\p{Greek}") <= 100);
        assert_eq!(size("a{"), 6, "a lone brace is a literal");
        assert_eq!(size("(?:ab)|c"), 6);
        assert_eq!(size("(?P<id>[0-9]+)"), 8);
    }

    #[test]
    fn the_size_estimate_survives_malformed_patterns() {
        for p in [
            "[",
            "(",
            ")",
            "\\",
            "[a",
            "[[:",
            "(?",
            "(?P<",
            "a{",
            "a{1,",
            "a{1,2",
            "\\Q",
            "\\p{",
            "\\x",
            "\\x{",
            "*",
            "a**",
            "[]",
            "[^]",
            "(|)",
            "{}",
            "a{99999999999999999999}",
            "é{3}",
            "(?i",
            "[\\",
        ] {
            let _ = re2_program_size_estimate(p);
            let mut cx = Ctx::default();
            let _ = compile(&mut cx, &FieldPath::root(), p);
        }
    }
}
