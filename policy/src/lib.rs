//! Policy decisions: identity, model access, limits, budgets, tool rules and
//! pricing. Pure: no IO, no clock reads (time is an argument), no runtime.
#![forbid(unsafe_code)]
