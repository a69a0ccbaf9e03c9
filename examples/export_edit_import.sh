#!/bin/sh
# Export every postback to JSONL, edit it with ordinary tools, import it
# back: import creates what is new and updates what changed, and a second
# import changes nothing.
#
#   OFFERSLOOK_NETWORK=... OFFERSLOOK_API_KEY=... [OFFERSLOOK_BASE_URL=...] \
#   sh examples/export_edit_import.sh
set -eu
LUA=${LUA:-lua5.4}
here=$(dirname "$0")
postback() { "$LUA" "$here/../bin/postback" --json "$@"; }
file=$(mktemp)
trap 'rm -f "$file" "$file.new"' EXIT

postback export "$file"
echo "exported $(wc -l < "$file") postbacks"
# the edit: every http:// postback becomes https:// (export writes "/" as it is)
sed 's#"code":"http://#"code":"https://#' "$file" > "$file.new"
echo "import: $(postback import "$file.new")"
echo "again:  $(postback import "$file.new")"
