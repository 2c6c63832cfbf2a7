//! Resource quantities (`100m`, `1Gi`, `2e3`) as upstream's `resource.Quantity`: parsing,
//! exact arithmetic, comparison and the canonical string form, plus resource lists (the
//! `requests`, `limits`, `hard` and `used` maps) and the operations quota needs on them.
//!
//! k8s-openapi's `Quantity` is only the string; this is the number behind it. A value is held
//! exactly in nano-units (upstream rounds anything finer up to 1n when parsing) together with
//! the format its suffix chose, which the canonical form keeps: `1.5Gi` prints `1536Mi`,
//! `1000m` prints `1`, `0.5` prints `500m`.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity as ApiQuantity;

/// Nano-units per unit.
const NANOS: i128 = 1_000_000_000;
/// Upstream caps every parsed value at the largest int64 (in units).
const MAX_NANOS: i128 = i64::MAX as i128 * NANOS;

/// How a quantity prints, chosen by the suffix it was written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// `k`, `M`, `m`, `n`... or no suffix.
    DecimalSI,
    /// `Ki`, `Mi`, `Gi`...
    BinarySI,
    /// `e3`, `E-2`.
    DecimalExponent,
}

/// Why a string is not a quantity (upstream's messages).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The text is not a number followed by a suffix.
    #[error("quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'")]
    Format,
    /// The suffix is not one upstream knows.
    #[error("unable to parse quantity's suffix")]
    Suffix,
}

/// An exact resource quantity.
#[derive(Debug, Clone, Copy)]
pub struct Quantity {
    nanos: i128,
    format: Format,
}

impl PartialEq for Quantity {
    /// Equal when the values are (upstream's `Cmp(...) == 0`): `1000m == 1`.
    fn eq(&self, other: &Quantity) -> bool {
        self.nanos == other.nanos
    }
}

impl Eq for Quantity {}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Quantity) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Quantity {
    fn cmp(&self, other: &Quantity) -> Ordering {
        self.nanos.cmp(&other.nanos)
    }
}

impl Default for Quantity {
    fn default() -> Quantity {
        Quantity::zero()
    }
}

fn pow10(exp: u32) -> Option<i128> {
    10i128.checked_pow(exp)
}

/// `n / d` rounded away from zero (upstream's `inf.RoundUp`).
fn div_away_from_zero(n: i128, d: i128) -> i128 {
    let q = n / d;
    if n % d != 0 { q + n.signum() } else { q }
}

/// `n / d` rounded up (towards positive infinity), as `Quantity.ScaledValue`.
fn div_ceil(n: i128, d: i128) -> i128 {
    let q = n / d;
    if n % d > 0 { q + 1 } else { q }
}

impl Quantity {
    /// Zero (prints `0`).
    pub const fn zero() -> Quantity {
        Quantity {
            nanos: 0,
            format: Format::DecimalSI,
        }
    }

    /// `value` units in `format`.
    pub fn from_units(value: i64, format: Format) -> Quantity {
        Quantity {
            nanos: i128::from(value) * NANOS,
            format,
        }
    }

    /// Parses a quantity as upstream's `ParseQuantity` does: an optionally signed decimal
    /// number, then a decimal SI suffix, a binary SI suffix or an exponent; values finer than
    /// a nano-unit are rounded up to one, values beyond the largest int64 are capped.
    pub fn parse(s: &str) -> Result<Quantity, ParseError> {
        let (negative, rest) = match s.as_bytes().first() {
            Some(b'-') => (true, &s[1..]),
            Some(b'+') => (false, &s[1..]),
            _ => (false, s),
        };
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, suffix) = rest.split_at(num_end);
        let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
        if int_part.is_empty() && frac_part.is_empty() || frac_part.contains('.') {
            return Err(ParseError::Format);
        }
        let (exp10, exp2, format) = match suffix {
            "" => (0, 0, Format::DecimalSI),
            "n" => (-9, 0, Format::DecimalSI),
            "u" => (-6, 0, Format::DecimalSI),
            "m" => (-3, 0, Format::DecimalSI),
            "k" => (3, 0, Format::DecimalSI),
            "M" => (6, 0, Format::DecimalSI),
            "G" => (9, 0, Format::DecimalSI),
            "T" => (12, 0, Format::DecimalSI),
            "P" => (15, 0, Format::DecimalSI),
            "E" => (18, 0, Format::DecimalSI),
            "Ki" => (0, 10, Format::BinarySI),
            "Mi" => (0, 20, Format::BinarySI),
            "Gi" => (0, 30, Format::BinarySI),
            "Ti" => (0, 40, Format::BinarySI),
            "Pi" => (0, 50, Format::BinarySI),
            "Ei" => (0, 60, Format::BinarySI),
            other => {
                let Some(exp) = other.strip_prefix(['e', 'E']) else {
                    return Err(if other.bytes().all(|b| b"eEinumkKMGTP+-0123456789".contains(&b)) {
                        ParseError::Suffix
                    } else {
                        ParseError::Format
                    });
                };
                let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(ParseError::Suffix);
                }
                let exp: i32 = exp.parse().map_err(|_| ParseError::Suffix)?;
                (exp, 0, Format::DecimalExponent)
            }
        };
        // Keep at most 30 significant digits in the mantissa (beyond any real quantity).
        let digits = format!("{int_part}{frac_part}");
        let digits = digits.trim_start_matches('0');
        let keep = digits.len().min(30);
        let mantissa: i128 = if keep == 0 {
            0
        } else {
            digits[..keep].parse().map_err(|_| ParseError::Format)?
        };
        let dropped = (digits.len() - keep) as i32;
        let exp10 = i64::from(exp10) - frac_part.len() as i64 + i64::from(dropped) + 9;
        let mut nanos = mantissa;
        for _ in 0..exp2 {
            nanos = nanos.saturating_mul(2);
        }
        nanos = if exp10 >= 0 {
            match u32::try_from(exp10).ok().and_then(pow10) {
                Some(p) => nanos.saturating_mul(p),
                None if nanos == 0 => 0,
                None => i128::MAX,
            }
        } else {
            match u32::try_from(-exp10).ok().and_then(pow10) {
                Some(p) => div_away_from_zero(nanos, p),
                None => i128::from(nanos != 0),
            }
        };
        let nanos = nanos.min(MAX_NANOS);
        Ok(Quantity {
            nanos: if negative { -nanos } else { nanos },
            format,
        })
    }

    /// The format the canonical string uses.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Whether the value is zero.
    pub fn is_zero(&self) -> bool {
        self.nanos == 0
    }

    /// Whether the value is below zero.
    pub fn is_negative(&self) -> bool {
        self.nanos < 0
    }

    /// The value in units, rounded up (`1.5` → 2), saturating at the int64 range.
    pub fn value(&self) -> i64 {
        div_ceil(self.nanos, NANOS).clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
    }

    /// The value in milli-units, rounded up (`250n` → 1), saturating.
    pub fn milli_value(&self) -> i64 {
        div_ceil(self.nanos, NANOS / 1000).clamp(i128::from(i64::MIN), i128::from(i64::MAX))
            as i64
    }

    /// The exact value in nano-units.
    pub fn nano_value(&self) -> i128 {
        self.nanos
    }

    /// Adds `other`; a zero quantity takes `other`'s format, as upstream's `Add`.
    pub fn add(&mut self, other: &Quantity) {
        if self.nanos == 0 {
            self.format = other.format;
        }
        self.nanos = self.nanos.saturating_add(other.nanos);
    }

    /// Subtracts `other`; a zero quantity takes `other`'s format, as upstream's `Sub`.
    pub fn sub(&mut self, other: &Quantity) {
        if self.nanos == 0 {
            self.format = other.format;
        }
        self.nanos = self.nanos.saturating_sub(other.nanos);
    }

    /// The k8s-openapi form (the canonical string).
    pub fn to_api(&self) -> ApiQuantity {
        ApiQuantity(self.to_string())
    }

    /// The canonical string of `s` if it is a quantity (`1000m` → `1`), else `None`.
    pub fn canonical(s: &str) -> Option<String> {
        Quantity::parse(s).ok().map(|q| q.to_string())
    }
}

/// Decimal SI suffixes by power of ten.
fn decimal_suffix(exp: i64) -> Option<&'static str> {
    Some(match exp {
        -9 => "n",
        -6 => "u",
        -3 => "m",
        0 => "",
        3 => "k",
        6 => "M",
        9 => "G",
        12 => "T",
        15 => "P",
        18 => "E",
        _ => return None,
    })
}

impl fmt::Display for Quantity {
    /// The canonical form, as upstream's `Quantity.String()`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nanos == 0 {
            return f.write_str("0");
        }
        let mut format = self.format;
        if format == Format::BinarySI
            && (self.nanos.unsigned_abs() < (1024 * NANOS) as u128 || self.nanos % NANOS != 0)
        {
            // Small or fractional binary values print in decimal rather than lose precision.
            format = Format::DecimalSI;
        }
        if format == Format::BinarySI {
            let mut units = self.nanos / NANOS;
            let mut power = 0;
            while power < 6 && units % 1024 == 0 {
                units /= 1024;
                power += 1;
            }
            let suffix = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"][power];
            return write!(f, "{units}{suffix}");
        }
        // Mantissa and exponent: strip factors of ten, then lower the exponent to a
        // multiple of three.
        let mut mantissa = self.nanos;
        let mut exp: i64 = -9;
        while mantissa % 10 == 0 {
            mantissa /= 10;
            exp += 1;
        }
        match exp.rem_euclid(3) {
            1 => {
                mantissa = mantissa.saturating_mul(10);
                exp -= 1;
            }
            2 => {
                mantissa = mantissa.saturating_mul(100);
                exp -= 2;
            }
            _ => {}
        }
        match (format, decimal_suffix(exp)) {
            (Format::DecimalSI, Some(suffix)) => write!(f, "{mantissa}{suffix}"),
            (_, _) if exp == 0 => write!(f, "{mantissa}"),
            _ => write!(f, "{mantissa}e{exp}"),
        }
    }
}

impl std::str::FromStr for Quantity {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Quantity, ParseError> {
        Quantity::parse(s)
    }
}

/// A quantity in milli-units (`"1"` → 1000, `"100m"` → 100), rounded up.
pub fn parse_milli(s: &str) -> Option<i64> {
    Quantity::parse(s).ok().map(|q| q.milli_value())
}

/// A quantity in units (`"1Gi"` → 1073741824, `"1.5"` → 2), rounded up.
pub fn parse_value(s: &str) -> Option<i64> {
    Quantity::parse(s).ok().map(|q| q.value())
}

/// Amounts by resource name: a container's requests, a quota's hard limits or usage.
pub type ResourceList = BTreeMap<String, Quantity>;

/// The resources of a k8s-openapi list; values that are not quantities are left out (the
/// API server refuses them, so only objects stored by something else can hold them).
pub fn from_api(list: &BTreeMap<String, ApiQuantity>) -> ResourceList {
    list.iter()
        .filter_map(|(k, v)| Quantity::parse(&v.0).ok().map(|q| (k.clone(), q)))
        .collect()
}

/// The k8s-openapi form of a list, every value canonical.
pub fn to_api(list: &ResourceList) -> BTreeMap<String, ApiQuantity> {
    list.iter().map(|(k, v)| (k.clone(), v.to_api())).collect()
}

/// `a + b`, key by key (keys of either side), as upstream's `quota.Add`.
pub fn add(a: &ResourceList, b: &ResourceList) -> ResourceList {
    let mut out = a.clone();
    for (k, v) in b {
        out.entry(k.clone()).or_insert_with(Quantity::zero).add(v);
    }
    out
}

/// `a - b` for the keys of `a`, never below zero (upstream's `SubtractWithNonNegativeResult`).
pub fn subtract_non_negative(a: &ResourceList, b: &ResourceList) -> ResourceList {
    a.iter()
        .map(|(k, v)| {
            let mut q = *v;
            if let Some(other) = b.get(k) {
                q.sub(other);
            }
            if q.is_negative() {
                q = Quantity {
                    nanos: 0,
                    format: q.format,
                };
            }
            (k.clone(), q)
        })
        .collect()
}

/// The entries of `list` whose names are in `names`.
pub fn mask<'a>(list: &ResourceList, names: impl IntoIterator<Item = &'a str>) -> ResourceList {
    names
        .into_iter()
        .filter_map(|n| list.get(n).map(|q| (n.to_owned(), *q)))
        .collect()
}

/// Whether every entry of `a` that `b` also names is at most `b`'s; the names that are not.
pub fn less_than_or_equal(a: &ResourceList, b: &ResourceList) -> (bool, Vec<String>) {
    let exceeded: Vec<String> = b
        .iter()
        .filter(|(k, limit)| a.get(*k).is_some_and(|v| v > *limit))
        .map(|(k, _)| k.clone())
        .collect();
    (exceeded.is_empty(), exceeded)
}

/// Whether both lists name the same resources with equal values (upstream's `quota.Equals`).
pub fn equals(a: &ResourceList, b: &ResourceList) -> bool {
    a.len() == b.len() && a.iter().all(|(k, v)| b.get(k) == Some(v))
}

/// `list` without its zero entries.
pub fn remove_zeros(list: &ResourceList) -> ResourceList {
    list.iter()
        .filter(|(_, v)| !v.is_zero())
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

/// The names of the negative entries, sorted.
pub fn negative(list: &ResourceList) -> Vec<String> {
    list.iter()
        .filter(|(_, v)| v.is_negative())
        .map(|(k, _)| k.clone())
        .collect()
}

/// `cpu=1,memory=1Gi`: sorted by name, as upstream's quota messages print lists.
pub fn pretty_print(list: &ResourceList) -> String {
    list.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    #[test]
    fn canonical_forms_match_upstream() {
        // (input, canonical string), from upstream's quantity tests.
        let table = [
            ("0", "0"),
            ("0m", "0"),
            ("0Gi", "0"),
            ("1", "1"),
            ("1000m", "1"),
            ("1500m", "1500m"),
            ("0.5", "500m"),
            ("1.5", "1500m"),
            ("0.1", "100m"),
            ("10", "10"),
            ("1500", "1500"),
            ("2000", "2k"),
            ("12e6", "12e6"),
            ("1e3", "1e3"),
            ("1.5e3", "1500"),
            ("1E", "1E"),
            ("1k", "1k"),
            ("1000k", "1M"),
            ("1Ki", "1Ki"),
            ("1024", "1024"),
            ("1024Ki", "1Mi"),
            ("1.5Gi", "1536Mi"),
            ("0.5Ki", "512"),
            ("1.5Ki", "1536"),
            ("100Mi", "100Mi"),
            ("250n", "250n"),
            ("1.0000000001", "1000000001n"),
            ("0.0000000001", "1n"),
            ("-1", "-1"),
            ("-500m", "-500m"),
            ("+2", "2"),
            (".5", "500m"),
            ("05", "5"),
            ("9223372036854775808", "9223372036854775807"),
        ];
        for (input, want) in table {
            assert_eq!(q(input).to_string(), want, "canonical form of {input:?}");
        }
    }

    #[test]
    fn malformed_quantities_are_refused() {
        for bad in ["", "abc", "1.2.3", ".", "-", "1Qi", "1e", "1e+", "1 ", " 1", "1KiB", "1K"] {
            assert!(Quantity::parse(bad).is_err(), "{bad:?} parsed");
        }
        assert_eq!(Quantity::parse("1Qi"), Err(ParseError::Format));
        assert_eq!(Quantity::parse("1K"), Err(ParseError::Suffix));
    }

    #[test]
    fn values_round_up() {
        let table: &[(&str, Option<i64>, Option<i64>)] = &[
            ("1", Some(1000), Some(1)),
            ("100m", Some(100), Some(1)),
            ("0.5", Some(500), Some(1)),
            ("2.5", Some(2500), Some(3)),
            ("1Ki", Some(1_024_000), Some(1024)),
            ("1Gi", Some(1_073_741_824_000), Some(1_073_741_824)),
            ("1G", Some(1_000_000_000_000), Some(1_000_000_000)),
            ("1e3", Some(1_000_000), Some(1000)),
            ("1.5Mi", Some(1_572_864_000), Some(1_572_864)),
            ("250n", Some(1), Some(1)),
            ("", None, None),
            ("1Qi", None, None),
        ];
        for (s, milli, value) in table {
            assert_eq!(parse_milli(s), *milli, "milli of {s:?}");
            assert_eq!(parse_value(s), *value, "value of {s:?}");
        }
    }

    #[test]
    fn sums_keep_the_first_nonzero_format() {
        let mut sum = Quantity::zero();
        sum.add(&q("1Gi"));
        sum.add(&q("512Mi"));
        assert_eq!(sum.to_string(), "1536Mi");
        let mut cpu = q("500m");
        cpu.add(&q("500m"));
        assert_eq!(cpu.to_string(), "1");
        let mut mixed = q("1");
        mixed.add(&q("1Ki"));
        assert_eq!(mixed.to_string(), "1025", "decimal first stays decimal");
        let mut back = q("1Gi");
        back.sub(&q("1Gi"));
        assert!(back.is_zero());
        assert_eq!(back.to_string(), "0");
        assert_eq!(q("1000m"), q("1"));
        assert!(q("1Gi") > q("1G"));
    }

    #[test]
    fn lists_add_mask_and_compare_like_quota() {
        let list = |pairs: &[(&str, &str)]| -> ResourceList {
            pairs.iter().map(|(k, v)| (k.to_string(), q(v))).collect()
        };
        let used = list(&[("requests.cpu", "1"), ("pods", "2")]);
        let requested = list(&[("requests.cpu", "1500m"), ("requests.memory", "1Gi")]);
        let sum = add(&used, &requested);
        assert_eq!(pretty_print(&sum), "pods=2,requests.cpu=2500m,requests.memory=1Gi");
        let hard = list(&[("requests.cpu", "2"), ("pods", "5")]);
        let (ok, exceeded) = less_than_or_equal(&sum, &hard);
        assert!(!ok);
        assert_eq!(exceeded, vec!["requests.cpu"]);
        assert!(less_than_or_equal(&used, &hard).0);
        assert_eq!(pretty_print(&mask(&sum, ["pods", "limits.cpu"])), "pods=2");
        let delta = subtract_non_negative(&list(&[("pods", "1"), ("cpu", "1")]), &list(&[("cpu", "2")]));
        assert_eq!(pretty_print(&delta), "cpu=0,pods=1");
        assert_eq!(pretty_print(&remove_zeros(&delta)), "pods=1");
        assert!(equals(&list(&[("cpu", "1000m")]), &list(&[("cpu", "1")])));
        assert!(!equals(&list(&[("cpu", "1")]), &list(&[("cpu", "1"), ("pods", "0")])));
        assert_eq!(negative(&list(&[("cpu", "-1"), ("pods", "1")])), vec!["cpu"]);
    }
}
