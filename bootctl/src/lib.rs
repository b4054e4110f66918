//! GPT slot control for A/B /usr updates (in progress).
#![deny(missing_docs)]
