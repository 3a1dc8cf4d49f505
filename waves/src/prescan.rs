//! A cheap look at a plan's YAML text before the YAML parser sees it, to refuse the two
//! bombs that the parser (libyaml under serde_norway) would otherwise take minutes and
//! gigabytes to reject or accept:
//!
//! - **alias expansion**: `&a` marks a node, `*a` repeats it. serde_norway expands
//!   every alias in full (a 64 KiB string aliased 60 000 times is 3.9 GB), and an
//!   alias inside an anchored node multiplies (billion laughs). Here each anchored
//!   node's size is over-estimated from the text (the rest of its line and every
//!   following line indented deeper), aliases nested in it counted recursively, and
//!   the sum over all aliases must stay within [`MAX_ALIAS_EXPANSION_BYTES`].
//! - **nesting**: libyaml's time grows with the square of the depth (100 000 `[` take
//!   22 s). The depth is estimated as indentation levels + block indicators (`- `,
//!   `? `) on the line + open flow brackets, and refused beyond [`MAX_NESTING`].
//!
//! The scan is a small lexer that knows quotes, comments and block scalars (`|`, `>`)
//! so that their content is not taken for syntax. It errs on the side of counting:
//! text it cannot place is scanned as syntax, which can only make an estimate larger.

use std::collections::HashMap;

/// Deeper than any plan needs (the schema's deepest value, a hook's argv, sits at
/// about 8 levels) and far below where libyaml slows down or serde_norway's own
/// recursion limit (128) stops.
pub const MAX_NESTING: usize = 32;
/// Anchors in one plan: one per shared setting block is a handful; a thousand is no
/// longer a plan written by a person.
pub const MAX_ANCHORS: usize = 1_000;
/// Aliases in one plan: room for one per VM of a 10 000-VM plan.
pub const MAX_ALIASES: usize = 10_000;
/// What aliases may add to the plan, in bytes of YAML text: as much as a plan may hold
/// (`MAX_PLAN_BYTES`), so a plan with aliases costs at most twice a plan without.
pub const MAX_ALIAS_EXPANSION_BYTES: u64 = crate::plan::MAX_PLAN_BYTES;

struct Anchor<'a> {
    name: &'a str,
    /// Byte range of the text the anchored node can occupy (an over-estimate).
    start: usize,
    end: usize,
}

struct Alias<'a> {
    name: &'a str,
    pos: usize,
    line: usize,
}

/// Refuses `text` if its nesting or its alias expansion is over the limits; the
/// message says which limit and where.
pub fn check(text: &str) -> Result<(), (Option<usize>, String)> {
    let (anchors, aliases) = scan(text)?;
    expansion(&anchors, &aliases)
}

/// Leading spaces of a line (YAML indents with spaces only).
fn indent(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

fn is_blank_or_comment(line: &str) -> bool {
    let t = line.trim_start_matches([' ', '\t']);
    t.is_empty() || t.starts_with('#')
}

/// The column where a line's node content starts once leading `- ` and `? ` block
/// indicators are skipped (a block scalar's content is indented deeper than this).
fn content_column(line: &str) -> (usize, usize) {
    let b = line.as_bytes();
    let mut i = indent(line);
    let mut indicators = 0;
    while i < b.len()
        && (b[i] == b'-' || b[i] == b'?')
        && b.get(i + 1).is_none_or(|&c| c == b' ' || c == b'\t')
    {
        indicators += 1;
        i += 1;
        while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
            i += 1;
        }
    }
    (i, indicators)
}

type Scan<'a> = (Vec<Anchor<'a>>, Vec<Alias<'a>>);

/// libyaml's anchor and alias name characters (`yaml_parser_scan_anchor`): a name ends
/// at the first other byte, exactly where libyaml ends it.
fn is_name_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'-'
}

fn scan(text: &str) -> Result<Scan<'_>, (Option<usize>, String)> {
    let lines: Vec<(usize, &str)> = {
        let mut v = Vec::new();
        let mut off = 0;
        for l in text.split_inclusive('\n') {
            v.push((off, l.trim_end_matches(['\n', '\r'])));
            off += l.len();
        }
        v
    };
    let (anchors, aliases) = names(text, &lines)?;
    depth(&lines)?;
    Ok((anchors, aliases))
}

/// Every `&name` and `*name` that follows a blank or a flow indicator, wherever it is:
/// inside quotes and comments too. Counting text as aliases can only raise the
/// estimate, while a lexer that misjudged where a quote starts could hide real ones.
fn names<'a>(
    text: &'a str,
    lines: &[(usize, &'a str)],
) -> Result<Scan<'a>, (Option<usize>, String)> {
    let b = text.as_bytes();
    let mut anchors = Vec::new();
    let mut aliases = Vec::new();
    let mut li = 0;
    for i in 0..b.len() {
        if b[i] != b'&' && b[i] != b'*' {
            continue;
        }
        if i > 0
            && !matches!(
                b[i - 1],
                b' ' | b'\t' | b'\n' | b'\r' | b'[' | b'{' | b',' | b':' | b'-' | b'?'
            )
        {
            continue;
        }
        let mut j = i + 1;
        while j < b.len() && is_name_byte(b[j]) {
            j += 1;
        }
        if j == i + 1 {
            continue;
        }
        while li + 1 < lines.len() && lines[li + 1].0 <= i {
            li += 1;
        }
        let name = &text[i + 1..j];
        if b[i] == b'&' {
            anchors.push(Anchor {
                name,
                start: i,
                end: node_end(lines, li),
            });
            if anchors.len() > MAX_ANCHORS {
                return Err((
                    Some(li + 1),
                    format!("more than {MAX_ANCHORS} anchors (&name)"),
                ));
            }
        } else {
            aliases.push(Alias {
                name,
                pos: i,
                line: li + 1,
            });
            if aliases.len() > MAX_ALIASES {
                return Err((
                    Some(li + 1),
                    format!("more than {MAX_ALIASES} aliases (*name)"),
                ));
            }
        }
    }
    Ok((anchors, aliases))
}

/// Refuses nesting deeper than [`MAX_NESTING`]: indentation levels, `- ` and `? `
/// indicators on a line, open `[` and `{`. Quoted scalars, comments and block scalars
/// are skipped so that brackets in text do not count; a quote is taken as one only
/// where a node can start (after `: `, `- `, `[`, `,`, an anchor or tag, at the start of
/// a line that does not continue a plain scalar), as libyaml takes it.
fn depth(lines: &[(usize, &str)]) -> Result<(), (Option<usize>, String)> {
    let mut quote: Option<u8> = None;
    let mut flow = 0usize;
    let mut block_scalar: Option<usize> = None;
    let mut indents: Vec<usize> = Vec::new();
    // The indent of the line where a plain scalar that may continue began.
    let mut plain_open: Option<usize> = None;
    let mut node_start = true;
    let too_deep = |line: usize| {
        Err((
            Some(line + 1),
            format!("nesting deeper than {MAX_NESTING} levels: refused before parsing"),
        ))
    };
    for (li, &(_, line)) in lines.iter().enumerate() {
        if let Some(n) = block_scalar {
            if line.trim().is_empty() || indent(line) > n {
                continue;
            }
            block_scalar = None;
        }
        let b = line.as_bytes();
        let mut i = 0;
        let mut indicators = 0;
        let mut plain_here = false;
        if quote.is_none() && flow == 0 {
            if is_blank_or_comment(line) {
                continue;
            }
            let ind = indent(line);
            match plain_open {
                // A deeper line continues the plain scalar above: text, not a node.
                Some(pi) if ind > pi => {
                    node_start = false;
                    plain_here = true;
                    i = ind;
                }
                _ => {
                    plain_open = None;
                    node_start = true;
                    while indents.last().is_some_and(|&t| t > ind) {
                        indents.pop();
                    }
                    if indents.last().is_none_or(|&t| t < ind) {
                        indents.push(ind);
                    }
                    let (col, n) = content_column(line);
                    indicators = n;
                    i = col;
                    if indents.len() + indicators > MAX_NESTING {
                        return too_deep(li);
                    }
                }
            }
        }
        let blank_before = |i: usize| i == 0 || matches!(b[i - 1], b' ' | b'\t');
        while i < b.len() {
            let c = b[i];
            if let Some(q) = quote {
                // Inside a quoted scalar: look for its end only.
                if c == b'\\' && q == b'"' {
                    i += 2;
                    continue;
                }
                if c == q {
                    if q == b'\'' && b.get(i + 1) == Some(&b'\'') {
                        i += 2;
                        continue;
                    }
                    quote = None;
                    node_start = false;
                }
                i += 1;
                continue;
            }
            let next_blank = b.get(i + 1).is_none_or(|&n| n == b' ' || n == b'\t');
            match c {
                b' ' | b'\t' => {}
                b'#' if blank_before(i) => break,
                b'"' | b'\'' if node_start => quote = Some(c),
                b'[' | b'{' if node_start || flow > 0 => {
                    flow += 1;
                    node_start = true;
                    plain_here = false;
                    if indents.len() + indicators + flow > MAX_NESTING {
                        return too_deep(li);
                    }
                }
                b']' | b'}' if flow > 0 => {
                    flow -= 1;
                    node_start = false;
                }
                b',' if flow > 0 => {
                    node_start = true;
                    plain_here = false;
                }
                b':' if next_blank || flow > 0 => {
                    node_start = true;
                    plain_here = false;
                }
                b'-' | b'?' if node_start && next_blank && flow == 0 => {
                    indicators += 1;
                    if indents.len() + indicators > MAX_NESTING {
                        return too_deep(li);
                    }
                }
                b'&' | b'!' if node_start => {
                    // An anchor or a tag: the node itself follows.
                    while i < b.len() && !matches!(b[i], b' ' | b'\t') {
                        i += 1;
                    }
                    continue;
                }
                b'|' | b'>' if node_start && flow == 0 => {
                    // A block scalar: its lines are text, whatever they hold.
                    block_scalar = Some(content_column(line).0);
                    break;
                }
                _ => {
                    if node_start && flow == 0 {
                        plain_here = true;
                    }
                    node_start = false;
                }
            }
            i += 1;
        }
        if quote.is_none() && flow == 0 && block_scalar.is_none() {
            if plain_here && plain_open.is_none() {
                plain_open = Some(indent(line));
            } else if !plain_here {
                plain_open = None;
            }
        }
    }
    Ok(())
}

/// The end (byte offset) of the text a node anchored on line `li` can occupy: the rest
/// of that line and each following line indented deeper than it (or at its indent and
/// opening a block sequence entry, `key: &a` followed by `- x` lines), blank and
/// comment lines included.
fn node_end(lines: &[(usize, &str)], li: usize) -> usize {
    let base = indent(lines[li].1);
    let mut end = li;
    for (k, &(_, l)) in lines.iter().enumerate().skip(li + 1) {
        if is_blank_or_comment(l) {
            continue;
        }
        let ind = indent(l);
        if ind > base || (ind == base && l[ind..].starts_with("- ")) || l[ind..] == *"-" {
            end = k;
        } else {
            break;
        }
    }
    lines
        .get(end + 1)
        .map_or_else(|| lines[end].0 + lines[end].1.len(), |&(o, _)| o)
}

/// Sums what the aliases expand to and refuses more than the limit.
fn expansion(anchors: &[Anchor], aliases: &[Alias]) -> Result<(), (Option<usize>, String)> {
    if aliases.is_empty() {
        return Ok(());
    }
    // An alias names the latest anchor of that name before it; text the scan took for
    // an anchor (in a comment, a string) must not hide a real one, so every anchor of
    // that name before it counts.
    let mut target: Vec<Vec<usize>> = Vec::with_capacity(aliases.len());
    {
        let mut seen: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut a = 0;
        for al in aliases {
            while a < anchors.len() && anchors[a].start < al.pos {
                seen.entry(anchors[a].name).or_default().push(a);
                a += 1;
            }
            target.push(seen.get(al.name).cloned().unwrap_or_default());
        }
    }
    let cap = MAX_ALIAS_EXPANSION_BYTES + 1;
    let mut memo: Vec<Option<u64>> = vec![None; anchors.len()];
    let mut visiting = vec![false; anchors.len()];
    let mut total = 0u64;
    for (k, ts) in target.iter().enumerate() {
        for &t in ts {
            let size = expanded(t, anchors, aliases, &target, &mut memo, &mut visiting, cap);
            total = total.saturating_add(size);
        }
        if total > MAX_ALIAS_EXPANSION_BYTES {
            return Err((
                Some(aliases[k].line),
                format!(
                    "aliases (*{}) would expand the plan by more than {MAX_ALIAS_EXPANSION_BYTES} bytes: refused before parsing",
                    aliases[k].name
                ),
            ));
        }
    }
    Ok(())
}

/// The bytes anchor `i` stands for, its nested aliases expanded, capped at `cap`.
fn expanded(
    i: usize,
    anchors: &[Anchor],
    aliases: &[Alias],
    target: &[Vec<usize>],
    memo: &mut [Option<u64>],
    visiting: &mut [bool],
    cap: u64,
) -> u64 {
    if let Some(v) = memo[i] {
        return v;
    }
    let a = &anchors[i];
    let own = (a.end - a.start) as u64;
    if visiting[i] {
        // An alias inside its own anchor (or a loop of the over-estimated spans):
        // serde_norway stops real recursion itself; count the text once.
        return own;
    }
    visiting[i] = true;
    let mut size = own;
    let first = aliases.partition_point(|al| al.pos < a.start);
    for k in first..aliases.len() {
        if aliases[k].pos >= a.end || size >= cap {
            break;
        }
        for &t in &target[k] {
            size = size.saturating_add(expanded(t, anchors, aliases, target, memo, visiting, cap));
        }
    }
    visiting[i] = false;
    let size = size.min(cap);
    memo[i] = Some(size);
    size
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_anchors_and_text_that_looks_like_syntax() {
        let text = "version: 1\ndefaults: &d\n  compress: true\nhooks: &h\n  pre:\n    command: [\"echo\", \"[[[ *x &y\"]\nwaves:\n  - name: a # [[[[\n    vms:\n      - source: a*b.vmx\n        hooks: *h\n      - source: 'it''s [ {'\n        hooks: *h\n    note: |\n      [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[ *h *h\n";
        assert_eq!(check(text), Ok(()));
    }

    #[test]
    fn refuses_deep_flow_nesting() {
        let text = format!("waves: {}", "[".repeat(100_000));
        let (line, msg) = check(&text).unwrap_err();
        assert_eq!(line, Some(1));
        assert!(msg.contains("nesting deeper than 32"), "{msg}");
    }

    #[test]
    fn refuses_deep_block_nesting() {
        let mut text = String::new();
        for d in 0..100 {
            text.push_str(&" ".repeat(d));
            text.push_str("- a:\n");
        }
        assert!(check(&text).unwrap_err().1.contains("nesting deeper"));
        assert!(check(&format!("{}x\n", "- ".repeat(100))).is_err());
    }

    #[test]
    fn refuses_a_large_node_aliased_many_times() {
        let mut text = format!("big: &b \"{}\"\nlist:\n", "x".repeat(64 << 10));
        for _ in 0..100 {
            text.push_str("  - *b\n");
        }
        let (line, msg) = check(&text).unwrap_err();
        assert!(line.is_some());
        assert!(msg.contains("aliases (*b) would expand"), "{msg}");
    }

    #[test]
    fn refuses_billion_laughs() {
        let mut text = String::from("a0: &a0 [\"lol\"]\n");
        for i in 1..10 {
            let refs = vec![format!("*a{}", i - 1); 10].join(", ");
            text.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        text.push_str("top: *a9\n");
        assert!(check(&text).unwrap_err().1.contains("would expand"));
    }

    #[test]
    fn refuses_too_many_aliases() {
        let text = format!("a: &a x\nb: [{}]\n", vec!["*a"; MAX_ALIASES + 1].join(","));
        assert!(check(&text)
            .unwrap_err()
            .1
            .contains("more than 10000 aliases"));
    }

    #[test]
    fn a_quote_inside_a_plain_scalar_hides_nothing() {
        // `"b` continues the plain scalar `a`: it opens no quote, so the brackets and
        // aliases on the next line are syntax and count.
        let deep = format!("k: a\n  \"b\nl: {}\nm: \"\"\n", "[".repeat(100));
        assert!(check(&deep).unwrap_err().1.contains("nesting deeper"));
        let aliases = format!(
            "big: &big \"{}\"\nk: a\n  \"b\nl: [{}]\nm: \"\"\n",
            "x".repeat(64 << 10),
            vec!["*big"; 100].join(",")
        );
        assert!(check(&aliases).unwrap_err().1.contains("would expand"));
    }

    #[test]
    fn an_anchor_in_a_comment_does_not_shadow_the_real_one() {
        let text = format!(
            "big: &big \"{}\"\n# &big\nl: [{}]\n",
            "x".repeat(64 << 10),
            vec!["*big"; 100].join(",")
        );
        assert!(check(&text).unwrap_err().1.contains("would expand"));
    }
}
