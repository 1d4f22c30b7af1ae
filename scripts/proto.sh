#!/usr/bin/env bash
# Regenerates the Go code for every .proto file under proto/ (written next to
# the .proto files, paths=source_relative). The generated code is committed.
#
#   scripts/proto.sh           regenerate proto/**/*.pb.go
#   scripts/proto.sh --check   regenerate into a temp dir and fail, listing the
#                              files, if the committed code is stale (for CI)
#
# Needs protoc (Debian: apt-get install protobuf-compiler, which also puts the
# well-known types under /usr/include) and Go. The protoc plugins are pinned
# and installed into ./.bin on first use.
set -euo pipefail

PROTOC_GEN_GO_VERSION=v1.36.12
PROTOC_GEN_GO_GRPC_VERSION=v1.6.2

usage() {
	echo "usage: $0 [--check]" >&2
	exit 2
}

check=0
case "${1-}" in
"") ;;
--check) check=1 ;;
-h | --help) usage ;;
*) usage ;;
esac
[[ $# -le 1 ]] || usage

die() {
	echo "proto.sh: $*" >&2
	exit 1
}

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# --- protoc and the well-known types -----------------------------------------

command -v protoc >/dev/null 2>&1 ||
	die "protoc not found; install it with: apt-get install -y protobuf-compiler"

wkt_include=""
for dir in "${PROTOC_INCLUDE-}" /usr/include /usr/local/include \
	"$(dirname "$(command -v protoc)")/../include"; do
	if [[ -n "$dir" && -f "$dir/google/protobuf/timestamp.proto" ]]; then
		wkt_include="$dir"
		break
	fi
done
[[ -n "$wkt_include" ]] ||
	die "well-known types (google/protobuf/*.proto) not found in /usr/include; install them with: apt-get install -y protobuf-compiler (or set PROTOC_INCLUDE)"

# --- pinned plugins in ./.bin ------------------------------------------------

command -v go >/dev/null 2>&1 || die "go not found in PATH"
bin="$root/.bin"

# ensure_plugin NAME PACKAGE VERSION: installs PACKAGE@VERSION into ./.bin
# unless ./.bin/NAME already reports VERSION.
ensure_plugin() {
	local name=$1 pkg=$2 want=$3 have=""
	if [[ -x "$bin/$name" ]]; then
		# protoc-gen-go prints "protoc-gen-go v1.36.12",
		# protoc-gen-go-grpc prints "protoc-gen-go-grpc 1.6.2".
		have="$("$bin/$name" --version 2>/dev/null | awk '{print $NF}')" || have=""
		have="v${have#v}"
	fi
	if [[ "$have" != "$want" ]]; then
		echo "proto.sh: installing $pkg@$want into .bin" >&2
		rm -f "$bin/$name"
		GOBIN="$bin" GOFLAGS="${GOFLAGS-}" go install "$pkg@$want" ||
			die "could not install $pkg@$want"
		have="$("$bin/$name" --version 2>/dev/null | awk '{print $NF}')"
		have="v${have#v}"
		[[ "$have" == "$want" ]] || die "$bin/$name reports version $have, want $want"
	fi
}
ensure_plugin protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go "$PROTOC_GEN_GO_VERSION"
ensure_plugin protoc-gen-go-grpc google.golang.org/grpc/cmd/protoc-gen-go-grpc "$PROTOC_GEN_GO_GRPC_VERSION"

# --- generate ----------------------------------------------------------------

mapfile -t protos < <(cd proto && find . -name '*.proto' -type f | sed 's|^\./||' | LC_ALL=C sort)
[[ ${#protos[@]} -gt 0 ]] || die "no .proto files under proto/"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

protoc \
	-I proto \
	-I "$wkt_include" \
	--plugin=protoc-gen-go="$bin/protoc-gen-go" \
	--plugin=protoc-gen-go-grpc="$bin/protoc-gen-go-grpc" \
	--go_out="$tmp" --go_opt=paths=source_relative \
	--go-grpc_out="$tmp" --go-grpc_opt=paths=source_relative \
	"${protos[@]}"

# Generated files: in the fresh output, and currently in the tree.
mapfile -t fresh < <(cd "$tmp" && find . -name '*.pb.go' -type f | sed 's|^\./||' | LC_ALL=C sort)
mapfile -t current < <(cd proto && find . -name '*.pb.go' -type f | sed 's|^\./||' | LC_ALL=C sort)

if [[ $check -eq 0 ]]; then
	# Remove generated files whose .proto is gone, then install the new ones.
	for f in "${current[@]}"; do
		[[ -f "$tmp/$f" ]] || { rm -f "proto/$f"; echo "removed proto/$f"; }
	done
	for f in "${fresh[@]}"; do
		if ! cmp -s "$tmp/$f" "proto/$f"; then
			mkdir -p "$(dirname "proto/$f")"
			cp "$tmp/$f" "proto/$f"
			echo "wrote proto/$f"
		fi
	done
	exit 0
fi

# --check: compare the committed code with the fresh output.
stale=()
header_only=1
for f in "${fresh[@]}"; do
	if [[ ! -f "proto/$f" ]]; then
		stale+=("proto/$f (missing)")
		header_only=0
	elif ! cmp -s "$tmp/$f" "proto/$f"; then
		stale+=("proto/$f (differs)")
		# Is the only difference the "// protoc vX.Y.Z" header line?
		if ! diff -q <(grep -Ev '^//[[:space:]]+protoc[[:space:]]' "$tmp/$f") \
			<(grep -Ev '^//[[:space:]]+protoc[[:space:]]' "proto/$f") >/dev/null; then
			header_only=0
		fi
	fi
done
for f in "${current[@]}"; do
	if [[ ! -f "$tmp/$f" ]]; then
		stale+=("proto/$f (no longer generated)")
		header_only=0
	fi
done

if [[ ${#stale[@]} -gt 0 ]]; then
	{
		echo "proto.sh: generated Go code is stale:"
		printf '  %s\n' "${stale[@]}"
		if [[ $header_only -eq 1 ]]; then
			echo "Only the protoc version header differs: this machine has $(protoc --version);"
			echo "the committed code was generated with another protoc."
		fi
		echo "Run scripts/proto.sh and commit the result."
	} >&2
	exit 1
fi
echo "proto.sh: generated Go code is up to date (${#fresh[@]} files)"
