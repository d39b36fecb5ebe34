//! Kubernetes resource quantities (`500m`, `2`, `1.5Gi`, `1e3`) as numbers.
//!
//! The raylet advertises resources as plain numbers (`--num-cpus 1.5`, `--memory 2147483648`),
//! so the operator converts the quantities of container resources itself. Only the
//! canonical suffixes Kubernetes accepts are recognised; anything else is an error the
//! validation step reports, never a guess.

use std::fmt;

/// A quantity that is not in the Kubernetes format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{quantity:?} is not a Kubernetes quantity")]
pub struct BadQuantity {
    /// The text that failed to parse.
    pub quantity: String,
}

/// Parses a quantity into its value (`"500m"` → 0.5, `"1Ki"` → 1024.0).
pub fn parse(quantity: &str) -> Result<f64, BadQuantity> {
    let bad = || BadQuantity { quantity: quantity.to_string() };
    let text = quantity.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-')).unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    if number.is_empty() || number.starts_with('-') {
        return Err(bad());
    }
    let base: f64 = number.parse().map_err(|_| bad())?;
    let multiplier = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0_f64.powi(2),
        "Gi" => 1024.0_f64.powi(3),
        "Ti" => 1024.0_f64.powi(4),
        "Pi" => 1024.0_f64.powi(5),
        "Ei" => 1024.0_f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => {
            let power: i32 = exp[1..].parse().map_err(|_| bad())?;
            10f64.powi(power)
        }
        _ => return Err(bad()),
    };
    let value = base * multiplier;
    if value.is_finite() {
        Ok(value)
    } else {
        Err(bad())
    }
}

/// Parses a quantity of bytes, rounding a fractional byte up.
pub fn parse_bytes(quantity: &str) -> Result<u64, BadQuantity> {
    let value = parse(quantity)?;
    if value > u64::MAX as f64 {
        return Err(BadQuantity { quantity: quantity.to_string() });
    }
    Ok(value.ceil() as u64)
}

/// A resource amount printed the way the raylet flags take it: at most four decimals
/// (shoal's fixed-point precision), no trailing zeros.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Amount(pub f64);

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fixed = format!("{:.4}", self.0);
        let trimmed = fixed.trim_end_matches('0').trim_end_matches('.');
        f.write_str(if trimmed.is_empty() { "0" } else { trimmed })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_binary_and_exponent_suffixes_parse() {
        assert_eq!(parse("500m"), Ok(0.5));
        assert_eq!(parse("2"), Ok(2.0));
        assert_eq!(parse("1.5"), Ok(1.5));
        assert_eq!(parse("1k"), Ok(1000.0));
        assert_eq!(parse("1e3"), Ok(1000.0));
        assert_eq!(parse("1Ki"), Ok(1024.0));
        assert_eq!(parse_bytes("2Gi"), Ok(2 * 1024 * 1024 * 1024));
        assert_eq!(parse_bytes("512M"), Ok(512_000_000));
    }

    #[test]
    fn malformed_quantities_are_rejected() {
        for bad in ["", "abc", "1x", "-1", "1Kib", "Gi", "1e"] {
            assert!(parse(bad).is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn amounts_print_with_at_most_four_decimals() {
        assert_eq!(Amount(2.0).to_string(), "2");
        assert_eq!(Amount(0.5).to_string(), "0.5");
        assert_eq!(Amount(1.0 / 3.0).to_string(), "0.3333");
        assert_eq!(Amount(0.0).to_string(), "0");
    }
}
