//! Status numbers are always finite: serde helpers that leave a non-finite value out.

/// True when `value` is NaN or infinite, so that it is not serialized.
pub fn is_not_finite(value: &f64) -> bool {
    !value.is_finite()
}

/// True when `value` is unset, NaN or infinite, so that it is not serialized.
pub fn is_not_finite_opt(value: &Option<f64>) -> bool {
    !value.is_some_and(f64::is_finite)
}

/// `Some(value)` when it is finite.
pub fn finite(value: f64) -> Option<f64> {
    value.is_finite().then_some(value)
}
