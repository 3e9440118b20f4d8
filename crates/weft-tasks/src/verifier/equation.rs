//! Plain-equation answers: `(25-17)*8 = 64`, `25-17=8`, `<answer>...</answer>`,
//! and the `a op b = c` scanner behind the arithmetic-line counts.

use crate::countdown::{OpKind, Rules, Step};

/// An arithmetic expression over integers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Expr {
    Num(u64),
    Bin(Box<Expr>, OpKind, Box<Expr>),
}

impl Expr {
    /// The numbers the expression uses, left to right.
    pub(crate) fn leaves(&self) -> Vec<u64> {
        let mut out = Vec::new();
        self.collect_leaves(&mut out);
        out
    }

    fn collect_leaves(&self, out: &mut Vec<u64>) {
        match self {
            Expr::Num(n) => out.push(*n),
            Expr::Bin(l, _, r) => {
                l.collect_leaves(out);
                r.collect_leaves(out);
            }
        }
    }

    /// The value under Countdown rules, or the first illegal step as
    /// `a op b` (smaller minus larger, inexact division, over the cap).
    pub(crate) fn eval(&self, rules: &Rules) -> Result<u64, String> {
        match self {
            Expr::Num(n) => Ok(*n),
            Expr::Bin(l, op, r) => {
                let (a, b) = (l.eval(rules)?, r.eval(rules)?);
                let shown = format!("{a}{}{b}", op.symbol());
                let result = op.apply(a, b).ok_or_else(|| shown.clone())?;
                let step = Step {
                    a,
                    op: *op,
                    b,
                    result,
                };
                if rules.check(&step) {
                    Ok(result)
                } else {
                    Err(shown)
                }
            }
        }
    }
}

/// One answer line: an expression and, if written, the value it claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Equation {
    pub expr: Expr,
    pub stated: Option<u64>,
}

fn is_equation_char(c: char) -> bool {
    c.is_ascii_digit() || c.is_whitespace() || "+-*/()=".contains(c)
}

fn looks_like_equation(line: &str) -> bool {
    let line = line.trim().trim_end_matches('.');
    !line.is_empty()
        && line.chars().all(is_equation_char)
        && line.chars().any(|c| c.is_ascii_digit())
        && line.chars().any(|c| "+-*/".contains(c))
}

/// The answer lines: the last `<answer>` block's lines, or else the run of
/// equation-only lines that ends the text (trailing blank lines ignored).
pub(crate) fn final_equations(text: &str) -> Option<Vec<&str>> {
    if let Some(open) = text.rfind("<answer>") {
        let body = &text[open + "<answer>".len()..];
        let body = body.split("</answer>").next().unwrap_or(body);
        let lines: Vec<&str> = body
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        return (!lines.is_empty()).then_some(lines);
    }
    let mut lines: Vec<&str> = text
        .lines()
        .rev()
        .skip_while(|l| l.trim().is_empty())
        .take_while(|l| looks_like_equation(l))
        .map(str::trim)
        .collect();
    lines.reverse();
    (!lines.is_empty()).then_some(lines)
}

/// Parses `expr` or `expr = value`.
pub(crate) fn parse_line(line: &str) -> Result<Equation, String> {
    let line = line.trim().trim_end_matches('.');
    let mut parts = line.split('=');
    let lhs = parts.next().unwrap_or("");
    let stated = match parts.next() {
        None => None,
        Some(rhs) => Some(
            rhs.trim()
                .parse::<u64>()
                .map_err(|_| format!("{line:?}: the right-hand side is not a number"))?,
        ),
    };
    if parts.next().is_some() {
        return Err(format!("{line:?}: more than one `=`"));
    }
    let mut parser = Parser {
        chars: lhs.chars().filter(|c| !c.is_whitespace()).collect(),
        pos: 0,
        depth: 0,
    };
    let expr = parser.expr().map_err(|e| format!("{line:?}: {e}"))?;
    if parser.pos != parser.chars.len() {
        return Err(format!(
            "{line:?}: unexpected {:?}",
            parser.chars[parser.pos]
        ));
    }
    Ok(Equation { expr, stated })
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
    depth: usize,
}

const MAX_DEPTH: usize = 64;

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn expr(&mut self) -> Result<Expr, String> {
        let mut left = self.term()?;
        while let Some(op @ ('+' | '-')) = self.peek() {
            self.pos += 1;
            let right = self.term()?;
            left = Expr::Bin(Box::new(left), op_kind(op), Box::new(right));
        }
        Ok(left)
    }

    fn term(&mut self) -> Result<Expr, String> {
        let mut left = self.factor()?;
        while let Some(op @ ('*' | '/')) = self.peek() {
            self.pos += 1;
            let right = self.factor()?;
            left = Expr::Bin(Box::new(left), op_kind(op), Box::new(right));
        }
        Ok(left)
    }

    fn factor(&mut self) -> Result<Expr, String> {
        match self.peek() {
            Some('(') => {
                self.depth += 1;
                if self.depth > MAX_DEPTH {
                    return Err("parentheses nested too deep".into());
                }
                self.pos += 1;
                let inner = self.expr()?;
                if self.peek() != Some(')') {
                    return Err("missing `)`".into());
                }
                self.pos += 1;
                self.depth -= 1;
                Ok(inner)
            }
            Some(c) if c.is_ascii_digit() => {
                let start = self.pos;
                while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                    self.pos += 1;
                }
                let digits: String = self.chars[start..self.pos].iter().collect();
                digits
                    .parse()
                    .map(Expr::Num)
                    .map_err(|_| format!("number {digits} is too large"))
            }
            Some(c) => Err(format!("unexpected {c:?}")),
            None => Err("the expression ends early".into()),
        }
    }
}

fn op_kind(c: char) -> OpKind {
    OpKind::from_symbol(c).unwrap_or(OpKind::Add)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Tok {
    Num(Option<u64>),
    Op(OpKind),
    Eq,
    Open,
    Close,
    Other,
}

/// Every `a op b = c` on the line outside `[...]` lists and not part of a
/// longer expression; `None` for one whose numbers do not fit in u64.
pub(crate) fn line_equations(line: &str) -> Vec<Option<Step>> {
    let mut toks = Vec::new();
    let mut depth = 0usize;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            _ if depth > 0 => {}
            c if c.is_ascii_digit() => {
                let mut digits = String::from(c);
                while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    digits.push(d);
                    chars.next();
                }
                toks.push(Tok::Num(digits.parse().ok()));
            }
            c if c.is_whitespace() => {}
            '=' => toks.push(Tok::Eq),
            '(' => toks.push(Tok::Open),
            ')' => toks.push(Tok::Close),
            c => toks.push(OpKind::from_symbol(c).map_or(Tok::Other, Tok::Op)),
        }
    }
    let mut out = Vec::new();
    for i in 0..toks.len().saturating_sub(4) {
        let (Tok::Num(a), Tok::Op(op), Tok::Num(b), Tok::Eq, Tok::Num(c)) =
            (toks[i], toks[i + 1], toks[i + 2], toks[i + 3], toks[i + 4])
        else {
            continue;
        };
        let joined_before = i > 0 && matches!(toks[i - 1], Tok::Op(_) | Tok::Open | Tok::Close);
        let joined_after = matches!(toks.get(i + 5), Some(Tok::Op(_) | Tok::Open | Tok::Close));
        if joined_before || joined_after {
            continue;
        }
        out.push(match (a, b, c) {
            (Some(a), Some(b), Some(result)) => Some(Step { a, op, b, result }),
            _ => None,
        });
    }
    out
}
