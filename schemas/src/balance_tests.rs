//! Hand-computed fold cases and permutation/duplication properties.

use super::*;
