//! placeholder (the stand-in helper replaces this file)
