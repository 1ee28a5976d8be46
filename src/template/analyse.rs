//! Static analysis of one template for `engine check`: compile errors with a
//! position inside the template text, the helpers it calls, and the root
//! variables (columns) it reads. Pure: nothing is rendered.

use handlebars::template::{BlockParam, HelperTemplate, Parameter, Subexpression, TemplateElement};
use handlebars::{Path, PathSeg, Template, TemplateErrorReason};

use super::TemplateError;
use super::helpers::{all_helpers, arity, describe_arity, is_helper};

/// What [`analyse`] found in one template.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Analysis {
    /// Syntax errors, unknown helpers, wrong argument counts, partials. The
    /// `leaf` of each is empty: the caller knows where the template lives.
    pub errors: Vec<TemplateError>,
    /// Helper names the template calls, known or not, in order of first use.
    pub helpers: Vec<String>,
    /// Root variables the template reads (`{{lower (trim email)}}` → `email`,
    /// `{{params.list_id}}` → `params`), in order of first use. Names inside
    /// `#each`/`#with` blocks are relative to the block's item and are not
    /// root variables unless reached with `../` or `@root`.
    pub variables: Vec<String>,
    /// The template reads the whole render context, not named variables of
    /// it: `{{this}}`, `{{json this}}`, `{{#each this}}`, `{{@root}}` outside
    /// a block that changes the context.
    pub reads_whole_context: bool,
}

/// Analyses `template` without rendering it. See [`Analysis`].
#[must_use]
pub fn analyse(template: &str) -> Analysis {
    match Template::compile(template) {
        Ok(t) => analyse_compiled(template, &t),
        Err(e) => Analysis {
            errors: vec![compile_error(template, &e)],
            ..Analysis::default()
        },
    }
}

/// Analyses an already compiled template; `source` is its text, for positions.
pub(crate) fn analyse_compiled(source: &str, template: &Template) -> Analysis {
    let mut w = Walker {
        source,
        scopes: Vec::new(),
        out: Analysis::default(),
    };
    w.template(template, (1, 1));
    w.out
}

/// Turns a handlebars compile error into ours, with a message a user can act
/// on. pest's own messages ("expected `EOI`, `pre_whitespace_omitter`, …") are a
/// last resort: a small scan finds the usual mistakes first.
pub(crate) fn compile_error(source: &str, e: &handlebars::TemplateError) -> TemplateError {
    let (line, column) = e.pos().unwrap_or((1, 1));
    let (line, column, message) = match e.reason() {
        TemplateErrorReason::MismatchingClosedHelper(open, close) => (
            line,
            column,
            format!("`{{{{/{close}}}}}` closes `{{{{#{open}}}}}`; close it with `{{{{/{open}}}}}`"),
        ),
        TemplateErrorReason::MismatchingClosedDecorator(open, close) => (
            line,
            column,
            format!("`{{{{/{close}}}}}` closes `{{{{#*{open}}}}}`"),
        ),
        TemplateErrorReason::InvalidSyntax(pest) => match diagnose(source) {
            Some((offset, message)) => {
                let (l, c) = line_col(source, offset);
                (l, c, message)
            }
            None => (line, column, format!("invalid template syntax: {pest}")),
        },
        other => (line, column, other.to_string()),
    };
    TemplateError {
        leaf: String::new(),
        line,
        column,
        message,
    }
}

/// Finds the commonest syntax mistakes: an unclosed `{{`, unbalanced
/// parentheses or quotes inside `{{…}}`, an empty `{{}}`, and block tags that
/// don't pair up. Returns the byte offset to point at and a message.
fn diagnose(source: &str) -> Option<(usize, String)> {
    if source.contains("{{{{") {
        return None; // raw blocks: leave them to the parser's message
    }
    let mut open_blocks: Vec<(String, usize)> = Vec::new();
    let mut i = 0;
    while let Some(found) = source[i..].find("{{") {
        let start = i + found;
        if source[..start].ends_with('\\') {
            i = start + 2;
            continue;
        }
        let after = start + 2;
        // Comments may contain anything, `}}` included when written `{{!-- --}}`.
        if source[after..].starts_with("!--") {
            match source[after..].find("--}}") {
                Some(end) => {
                    i = after + end + 4;
                    continue;
                }
                None => return Some((start, "comment `{{!--` is never closed by `--}}`".into())),
            }
        }
        let Some(len) = source[after..].find("}}") else {
            return Some((start, "`{{` is never closed: add `}}`".into()));
        };
        let inner = &source[after..after + len];
        if inner.contains("{{") {
            return Some((start, "`{{` is not closed before the next `{{`".into()));
        }
        i = after + len + 2;
        if inner.starts_with('!') {
            continue;
        }
        let body = inner
            .trim_start_matches('{')
            .trim_start_matches('~')
            .trim_end_matches('~')
            .trim();
        if body.is_empty() {
            return Some((start, "empty expression `{{}}`".into()));
        }
        if let Some(problem) = unbalanced(body) {
            return Some((start, format!("{problem} in `{{{{{inner}}}}}`")));
        }
        if let Some(rest) = body.strip_prefix('#').or_else(|| body.strip_prefix('^')) {
            let rest = rest.trim_start_matches(['>', '*']).trim_start();
            let name = rest.split_whitespace().next().unwrap_or_default();
            if !name.is_empty() {
                open_blocks.push((name.to_owned(), start));
            }
        } else if let Some(rest) = body.strip_prefix('/') {
            let name = rest.trim();
            match open_blocks.pop() {
                None => {
                    return Some((
                        start,
                        format!("`{{{{/{name}}}}}` closes a block that was never opened"),
                    ));
                }
                Some((open, _)) if open != name => {
                    return Some((
                        start,
                        format!(
                            "`{{{{/{name}}}}}` closes `{{{{#{open}}}}}`; close it with `{{{{/{open}}}}}`"
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
    }
    open_blocks.pop().map(|(name, at)| {
        (
            at,
            format!("`{{{{#{name}}}}}` is never closed: add `{{{{/{name}}}}}`"),
        )
    })
}

/// Unbalanced parentheses or an unterminated string literal in an
/// expression body.
fn unbalanced(body: &str) -> Option<&'static str> {
    let mut depth = 0_i32;
    let mut quote: Option<char> = None;
    for c in body.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (None, '"' | '\'') => quote = Some(c),
            (None, '(') => depth += 1,
            (None, ')') => {
                depth -= 1;
                if depth < 0 {
                    return Some("unbalanced `)`");
                }
            }
            _ => {} // inside a string literal, or an ordinary character
        }
    }
    if quote.is_some() {
        Some("unterminated string literal")
    } else if depth > 0 {
        Some("unclosed `(`")
    } else {
        None
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let before = &source[..offset.min(source.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |n| n + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Byte offset of a 1-based line and character column.
fn offset_of(source: &str, line: usize, column: usize) -> usize {
    let mut offset = 0;
    for (i, l) in source.split_inclusive('\n').enumerate() {
        if i + 1 == line {
            return offset
                + l.char_indices()
                    .nth(column.saturating_sub(1))
                    .map_or(l.len(), |(b, _)| b);
        }
        offset += l.len();
    }
    source.len()
}

/// The closest known helper to an unknown name, if it is close enough.
#[must_use]
pub fn suggest_helper(name: &str) -> Option<&'static str> {
    all_helpers()
        .map(|h| (strsim::jaro_winkler(name, h), h))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, h)| h)
}

struct Scope {
    /// `#each` and `#with` move the context to the item; `#if` does not.
    changes_context: bool,
    block_params: Vec<String>,
}

struct Walker<'s> {
    source: &'s str,
    scopes: Vec<Scope>,
    out: Analysis,
}

impl Walker<'_> {
    fn template(&mut self, t: &Template, fallback: (usize, usize)) {
        for (i, element) in t.elements.iter().enumerate() {
            let pos = t.mapping.get(i).map_or(fallback, |m| (m.0, m.1));
            self.element(element, pos);
        }
    }

    fn element(&mut self, element: &TemplateElement, pos: (usize, usize)) {
        match element {
            TemplateElement::Expression(ht) | TemplateElement::HtmlExpression(ht) => {
                self.expression(ht, pos, false);
            }
            TemplateElement::HelperBlock(ht) => self.block(ht, pos),
            TemplateElement::DecoratorExpression(_)
            | TemplateElement::DecoratorBlock(_)
            | TemplateElement::PartialExpression(_)
            | TemplateElement::PartialBlock(_) => self.error(
                pos,
                "partials (`{{> name}}`) and decorators (`{{* name}}`) are not supported".into(),
            ),
            _ => {} // raw text, comments
        }
    }

    /// `{{name}}`, `{{helper args…}}`, or a subexpression `(helper args…)`.
    fn expression(&mut self, ht: &HelperTemplate, pos: (usize, usize), subexpression: bool) {
        let name_only = !ht.block && ht.params.is_empty() && ht.hash.is_empty();
        match &ht.name {
            Parameter::Path(path) if name_only && !subexpression && !is_helper_path(path) => {
                self.path(path);
                return;
            }
            Parameter::Name(n) | Parameter::Path(Path::Relative((_, n))) => {
                self.helper(n, ht.params.len(), pos);
            }
            Parameter::Subexpression(s) => self.subexpression(s, pos),
            _ => {}
        }
        for p in &ht.params {
            self.param(p, pos);
        }
        for p in ht.hash.values() {
            self.param(p, pos);
        }
    }

    fn block(&mut self, ht: &HelperTemplate, pos: (usize, usize)) {
        let name = ht.name.as_name().unwrap_or_default();
        self.helper(name, ht.params.len(), pos);
        for p in &ht.params {
            self.param(p, pos);
        }
        for p in ht.hash.values() {
            self.param(p, pos);
        }
        let block_params = match &ht.block_param {
            Some(BlockParam::Single(p)) => p.as_name().into_iter().map(str::to_owned).collect(),
            Some(BlockParam::Pair((a, b))) => [a, b]
                .iter()
                .filter_map(|p| p.as_name())
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        };
        if let Some(t) = &ht.template {
            self.scopes.push(Scope {
                changes_context: matches!(name, "each" | "with"),
                block_params,
            });
            self.template(t, pos);
            self.scopes.pop();
        }
        // `{{else}}` renders in the enclosing context.
        if let Some(t) = &ht.inverse {
            self.template(t, pos);
        }
    }

    fn param(&mut self, p: &Parameter, pos: (usize, usize)) {
        match p {
            Parameter::Path(path) => self.path(path),
            Parameter::Subexpression(s) => self.subexpression(s, pos),
            _ => {} // literals
        }
    }

    fn subexpression(&mut self, s: &Subexpression, pos: (usize, usize)) {
        // A subexpression is always a helper call, even `(today)`.
        if let TemplateElement::Expression(ht) = s.as_element() {
            self.expression(ht, pos, true);
        }
    }

    fn path(&mut self, path: &Path) {
        let segs = match path {
            Path::Relative((segs, _)) => segs,
            Path::Local((_, name, _)) if name == "root" => {
                self.out.reads_whole_context = true;
                return;
            }
            Path::Local(_) => return, // @index, @key, @first, @last
        };
        let (mut root, mut ups, mut first) = (false, 0, None);
        for seg in segs {
            match seg {
                PathSeg::Named(n) => {
                    first.get_or_insert(n.as_str());
                }
                // `Rule` is private to handlebars; its Debug name is stable.
                PathSeg::Ruled(rule) => match format!("{rule:?}").as_str() {
                    "path_root" => root = true,
                    "path_up" => ups += 1,
                    _ => {}
                },
                _ => {}
            }
        }
        let Some(first) = first else {
            // `this` (or `@root`): the whole context, unless a block made it
            // the block's item.
            let depth = self.scopes.iter().filter(|s| s.changes_context).count();
            if root || ups >= depth {
                self.out.reads_whole_context = true;
            }
            return;
        };
        if !root {
            if ups == 0
                && self
                    .scopes
                    .iter()
                    .any(|s| s.block_params.iter().any(|b| b == first))
            {
                return;
            }
            let depth = self.scopes.iter().filter(|s| s.changes_context).count();
            if ups < depth {
                return; // a field of the block's item
            }
        }
        push_unique(&mut self.out.variables, first);
    }

    fn helper(&mut self, name: &str, args: usize, pos: (usize, usize)) {
        if !self.out.helpers.iter().any(|h| h == name) {
            self.out.helpers.push(name.to_owned());
        }
        if !is_helper(name) {
            let message = match suggest_helper(name) {
                Some(s) => format!("unknown helper `{name}`; did you mean `{s}`?"),
                None => format!("unknown helper `{name}`"),
            };
            let at = self.name_pos(name, pos);
            self.error(at, message);
        } else if let Some((min, max)) = arity(name)
            && (args < min || max.is_some_and(|max| args > max))
        {
            let at = self.name_pos(name, pos);
            self.error(
                at,
                format!(
                    "helper `{name}` takes {}, got {args}",
                    describe_arity(min, max)
                ),
            );
        }
    }

    /// Where `name` is written, searching from the start of its expression
    /// (handlebars records positions per expression, not per subexpression).
    fn name_pos(&self, name: &str, pos: (usize, usize)) -> (usize, usize) {
        let from = offset_of(self.source, pos.0, pos.1);
        let rest = &self.source[from..];
        let is_ident = |c: char| c.is_alphanumeric() || matches!(c, '_' | '-' | '$' | ':');
        let mut search = 0;
        while let Some(found) = rest[search..].find(name) {
            let at = search + found;
            let before_ok = !rest[..at].chars().next_back().is_some_and(is_ident);
            let after_ok = !rest[at + name.len()..].chars().next().is_some_and(is_ident);
            if before_ok && after_ok {
                return line_col(self.source, from + at);
            }
            search = at + name.len();
        }
        pos
    }

    fn error(&mut self, (line, column): (usize, usize), message: String) {
        self.out.errors.push(TemplateError {
            leaf: String::new(),
            line,
            column,
            message,
        });
    }
}

/// A bare `{{name}}` calls a helper when `name` is one (`{{today}}`).
pub(crate) fn is_helper_path(path: &Path) -> bool {
    match path {
        Path::Relative((segs, raw)) => {
            matches!(segs.as_slice(), [PathSeg::Named(n)] if n == raw) && is_helper(raw)
        }
        Path::Local(_) => false,
    }
}

fn push_unique(list: &mut Vec<String>, name: &str) {
    if !list.iter().any(|v| v == name) {
        list.push(name.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_count_characters_from_one() {
        let s = "ab\nçd{{x";
        assert_eq!(line_col(s, 0), (1, 1));
        assert_eq!(line_col(s, 3), (2, 1));
        assert_eq!(line_col(s, s.find("{{").unwrap()), (2, 3));
        assert_eq!(offset_of(s, 2, 3), s.find("{{").unwrap());
    }

    #[test]
    fn suggestions_pick_the_nearest_helper() {
        assert_eq!(suggest_helper("lowr"), Some("lower"));
        assert_eq!(suggest_helper("frist_name"), Some("first_name"));
        assert_eq!(suggest_helper("sha265"), Some("sha256"));
        assert_eq!(suggest_helper("zzzzzz"), None);
    }
}
