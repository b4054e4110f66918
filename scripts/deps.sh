# Sourced by the scripts in this directory: installs the host packages and Rust targets the
# build and tests need, only when something is missing (so a second run costs nothing).

DEB_PACKAGES=(gdisk cgpt squashfs-tools erofs-utils dosfstools mtools busybox-static zstd e2fsprogs
  qemu-system-x86 ovmf grub-efi-amd64-bin grub-pc-bin musl-tools python3 cpio nginx
  etcd-server etcd-client openssl ipxe-qemu)

install_deps() {
  local missing=()
  for p in "${DEB_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt
  rustup target list --installed | grep -q x86_64-unknown-linux-musl || rustup target add x86_64-unknown-linux-musl
}
