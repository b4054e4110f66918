//! Publisher and factory tools: keys, /usr images, signed payloads and bootable disk images.
#![deny(missing_docs)]
