//! Integration tests of the stand-in: its HTTP answers (`stand_in`) and the real Claude Code
//! CLI driven by it (`real_cli`). One test binary, a module per area.

mod real_cli;
mod stand_in;
