//! Boot scenarios under OVMF and SeaBIOS.
