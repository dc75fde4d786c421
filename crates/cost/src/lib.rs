//! What workloads cost: price sheets (built in, each with its source and date, and the user's
//! own in TOML), money as exact integers, and the monthly cost of a traffic shape as a
//! scale-to-zero function, with provisioned instances, or as an always-on service, with the
//! break-even rate between them; and the advisor, which picks a model for a workload from
//! what it did. [`money`] holds the arithmetic, [`sheet`] the prices, [`calc`] the models,
//! [`bill`] what metered usage cost, [`advice`] the decision.
#![forbid(unsafe_code)]

pub mod advice;
pub mod bill;
pub mod calc;
pub mod money;
pub mod sheet;

pub use calc::calc;
pub use money::Money;
pub use sheet::{Sheet, Sheets};

/// Why a cost question could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum CostError {
    /// Bad input: the field and why.
    #[error("{0}")]
    Invalid(String),
    /// A price sheet is malformed: the file, the line where known, and why.
    #[error("price sheet {0}")]
    Sheet(String),
}
