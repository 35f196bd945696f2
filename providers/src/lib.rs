//! Provider adapters: one file per provider behind one small trait, turning the
//! gateway's OpenAI-shaped request into the provider's request and the
//! provider's response and stream back. Pure: no IO, no clock, no runtime.
#![forbid(unsafe_code)]
