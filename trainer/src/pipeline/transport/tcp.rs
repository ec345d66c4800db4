//! TCP links between pods (written next).
