//! Exact money: whole pico-dollars (10⁻¹² USD) in a `u128`, parsed from and shown as decimal
//! strings. Sums and products are integers; a division rounds half up, once, at the end of a
//! line of the bill.

use std::fmt;

/// Pico-dollars in one dollar.
pub const PICO: u128 = 1_000_000_000_000;

/// An amount of US dollars, exact to 10⁻¹².
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Money(pub u128);

/// `a / b`, rounded half up (`b` > 0).
pub fn div_round(a: u128, b: u128) -> u128 {
    (a + b / 2) / b
}

/// A non-negative decimal string (`"0.0000166667"`, `"12"`) as an integer scaled by
/// 10^`places`; more digits after the point than `places` is an error.
pub fn parse_fixed(text: &str, places: u32) -> Result<u128, String> {
    let t = text.trim();
    let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !(digits(whole) || (whole.is_empty() && digits(frac))) || !(frac.is_empty() || digits(frac)) {
        return Err(format!("`{text}` is not a non-negative decimal number"));
    }
    if frac.len() > places as usize {
        return Err(format!("`{text}` has more than {places} digits after the point"));
    }
    let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| format!("`{text}` is too large"))? };
    let frac_value: u128 = if frac.is_empty() { 0 } else { frac.parse().map_err(|_| format!("`{text}` is not a number"))? };
    let scale = 10u128.pow(places);
    whole.checked_mul(scale).and_then(|w| w.checked_add(frac_value * 10u128.pow(places - frac.len() as u32))).ok_or_else(|| format!("`{text}` is too large"))
}

/// An integer scaled by 10^`places` as a decimal string without trailing zeros.
pub fn show_fixed(value: u128, places: u32) -> String {
    let scale = 10u128.pow(places);
    let (whole, frac) = (value / scale, value % scale);
    if frac == 0 {
        return whole.to_string();
    }
    let frac = format!("{frac:0width$}", width = places as usize);
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

impl Money {
    pub const ZERO: Money = Money(0);

    /// Dollars from a decimal string, exact to 10⁻¹².
    pub fn parse(text: &str) -> Result<Money, String> {
        parse_fixed(text, 12).map(Money)
    }

    pub fn pico(self) -> u128 {
        self.0
    }

    /// Rounded to whole cents, as `12.34`.
    pub fn cents(self) -> String {
        let cents = div_round(self.0, PICO / 100);
        format!("{}.{:02}", cents / 100, cents % 100)
    }
}

impl std::ops::Add for Money {
    type Output = Money;
    fn add(self, o: Money) -> Money {
        Money(self.0 + o.0)
    }
}

impl std::iter::Sum for Money {
    fn sum<I: Iterator<Item = Money>>(iter: I) -> Money {
        iter.fold(Money::ZERO, |a, b| a + b)
    }
}

/// Exact dollars, without trailing zeros (`8.901234`).
impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&show_fixed(self.0, 12))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_parse_and_show_exactly() {
        assert_eq!(Money::parse("0.0000166667").unwrap().pico(), 16_666_700);
        assert_eq!(Money::parse("0.20").unwrap().pico(), 200_000_000_000);
        assert_eq!(Money::parse("12").unwrap().to_string(), "12");
        assert_eq!(Money::parse(".5").unwrap().to_string(), "0.5");
        assert_eq!(Money(1_234_567_890_123).to_string(), "1.234567890123");
        assert_eq!(Money(1_234_567_890_123).cents(), "1.23");
        assert_eq!(Money(1_235_000_000_000).cents(), "1.24", "half up");
        for bad in ["", "-1", "1.2.3", "abc", "1e5", "0.0000000000001", " . "] {
            assert!(Money::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(div_round(5, 2), 3);
        assert_eq!(div_round(4, 3), 1);
    }
}
