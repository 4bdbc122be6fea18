set -e
# DSO's in-container writer (the exec path), run as root: sh -c SCRIPT dso-inject MOUNT DIR DIGEST
# tar|b64 [NAME MODE UID GID]... with the tar (or one base64 line per file) on stdin. Same rules as
# the direct path (SECURITY.md): the tmpfs proven from /proc/self/mountinfo, no symlink followed
# below it, only DSO's names touched, "unchanged" only after comparing what is there with what
# was sent. The verdict is the exit code (ScriptExit fills in the @…@ codes): 0 written (prints
# "replaced" when an earlier set was), unchanged, not provably on the tmpfs, neither tar nor
# base64, a foreign entry at one of DSO's names (prints "dso-foreign:<name>", a name DSO gave), an
# owner name the container does not know.
m="$1"; d="$2"; g="$3"; x="$4"; shift 4
nt() { echo "dso: $1; nothing written" >&2; exit @NOT_TMPFS@; }
fe() { echo "dso-foreign:$1"; exit @FOREIGN@; }
set -f
names=; i=0
for a in "$@"; do [ $((i % 4)) -ne 0 ] || names="$names $a"; i=$((i + 1)); done
cd -P "$m" 2>/dev/null || nt "cannot enter $m"
p="$PWD"; rel="${d#"$m"}"; rel="${rel#/}"; e="$p${rel:+/$rel}"
fs=; under=
while read -r _ _ _ _ mp rest; do
  if [ "$mp" = "$p" ]; then fs="${rest#* - }"; fs="${fs%% *}"; under=; fi
  case "$e/" in "$mp"/*) [ "${#mp}" -le "${#p}" ] || under="$mp" ;; esac
done < /proc/self/mountinfo
[ "$fs" = tmpfs ] || nt "$m is not a tmpfs mount point"
[ -z "$under" ] || nt "another filesystem is mounted below $m"
if [ -n "$rel" ]; then
  IFS=/
  for c in $rel; do
    [ ! -L "$c" ] || nt "a symlink below $m"
    [ -d "$c" ] || mkdir "$c" 2>/dev/null || [ -d "$c" ] || nt "cannot create a directory below $m"
    [ ! -L "$c" ] || nt "a symlink below $m"
    cd -P "$c" || nt "cannot enter a directory below $m"; chown 0:0 .; chmod 0755 .
  done
  unset IFS
fi
[ "$PWD" = "$e" ] || nt "$d is not below $m"
# DSO's directory from now on: only root may add, rename or remove entries.
chown 0:0 .; chmod 0755 .
gen="..data_$g"; s=..dso_staging
# A name of DSO's cleared for a rename over it: an empty directory removed, a file or symlink left
# for the rename, anything else refused.
clr() {
  if [ -L "$1" ] || [ -f "$1" ] || [ ! -e "$1" ]; then return 0; fi
  [ -d "$1" ] && rmdir "$1" 2>/dev/null || fe "$1"
}
# A directory of DSO's removed by the names DSO writes into it (a foreign one only when empty).
rmg() {
  if [ -L "$1" ] || [ -f "$1" ]; then rm -f "$1"; return 0; fi
  [ -e "$1" ] || return 0
  [ -d "$1" ] || fe "$1"
  if [ -O "$1" ]; then for n in $names; do [ ! -d "$1/$n" ] || [ -L "$1/$n" ] || fe "$1"; rm -f "$1/$n"; done; fi
  rmdir "$1" 2>/dev/null && return 0
  [ -O "$1" ] || fe "$1"
  for f in "$1"/* "$1"/.[!.]* "$1"/..?*; do
    if [ -L "$f" ] || [ -f "$f" ]; then rm -f "$f"; elif [ -e "$f" ]; then fe "$1"; fi
  done
  rmdir "$1" 2>/dev/null || fe "$1"
}
for t in $s ..dso_link ..dso_ready; do rmg "$t"; done
umask 077
mkdir "$s"
trap 'rm -f $(for n in $names; do printf "%s/%s " "$s" "$n"; done); rmdir "$s" 2>/dev/null' EXIT
if [ "$x" = tar ]; then
  command -v tar >/dev/null 2>&1 || { echo "dso: no tar in this container" >&2; exit @NO_TAR@; }
  tar -x -f - -C "$s"
else
  command -v base64 >/dev/null 2>&1 || { echo "dso: neither tar nor base64 in this container" >&2; exit @NO_TAR@; }
  i=0
  for a in "$@"; do
    case $((i % 4)) in
      0) n="$a"; IFS= read -r line; printf '%s' "$line" | base64 -d > "$s/$n"; line= ;;
      1) f="$a" ;;
      2) u="$a" ;;
      3) case "$u$a" in *:*) ;; *) chown "$u:$a" "$s/$n" ;; esac; chmod "$f" "$s/$n" ;;
    esac
    i=$((i + 1))
  done
fi
# Owners given by name (u:NAME a user's uid, p:NAME its primary gid, g:NAME a group's gid) from
# the container's own /etc/passwd and /etc/group: builtins only, regular files only, at most 65536
# lines, each name looked up once; an unknown name (or a non-numeric id) ends the script before
# anything is swapped in (prints "dso-unknown-owner:<u|p|g>:<name>", a name DSO gave).
oc=
oid() {
  case "$1" in *:*) ;; *) r="$1"; return 0 ;; esac
  case "$oc " in *" $1="*) r="${oc#*" $1="}"; r="${r%% *}"; return 0 ;; esac
  case "$1" in
    u:*) on="${1#u:}"; of=/etc/passwd; ok=3 ;;
    p:*) on="${1#p:}"; of=/etc/passwd; ok=4 ;;
    *) on="${1#g:}"; of=/etc/group; ok=3 ;;
  esac
  r=; k=0
  if [ -f "$of" ] && [ ! -p "$of" ]; then
    while [ "$k" -lt 65536 ] && { IFS=: read -r f1 f2 f3 f4 f5 || [ -n "$f1" ]; }; do
      k=$((k + 1))
      if [ "$f1" = "$on" ]; then if [ "$ok" = 3 ]; then r="$f3"; else r="$f4"; fi; break; fi
      f1=
    done < "$of"
  fi
  case "$r" in ''|*[!0-9]*|???????????*) echo "dso-unknown-owner:$1"; exit @UNKNOWN_OWNER@ ;; esac
  oc="$oc $1=$r"
}
i=0
for a in "$@"; do
  case $((i % 4)) in
    0) n="$a" ;;
    1) f="$a" ;;
    2) u="$a" ;;
    3) case "$u$a" in *:*) oid "$u"; u="$r"; oid "$a"; chown "$u:$r" "$s/$n"; chmod "$f" "$s/$n" ;; esac ;;
  esac
  i=$((i + 1))
done
# Unchanged only when what is there is what was sent: links, owners, modes and bytes.
v=1
cur=; [ ! -f .ready ] || [ -L .ready ] || read -r cur < .ready || true
[ "$cur" = "$g" ] || v=
if [ -n "$v" ]; then
  l=$(ls -lnd -- ..data "$gen" $names 2>/dev/null) || v=
  while read -r perm _ uid _ rest; do
    [ "$uid" = 0 ] || v=
    case "$rest" in *" -> "*) n="${rest% -> *}"; n="${n##* }"; t="${rest##* -> }" ;; *) n="${rest##* }"; t= ;; esac
    case "$n" in
      ..data) case "$perm" in l*) [ "$t" = "$gen" ] || v= ;; *) v= ;; esac ;;
      "$gen") case "$perm" in d*) ;; *) v= ;; esac ;;
      *) case "$perm" in l*) [ "$t" = "..data/$n" ] || v= ;; *) v= ;; esac ;;
    esac
  done <<EOF
$l
EOF
fi
norm() { while read -r perm _ uid gid size rest; do printf '%s %s %s %s %s\n' "$perm" "$uid" "$gid" "$size" "${rest##* }"; done; }
if [ -n "$v" ]; then
  a=$(cd "$gen" && ls -lnd -- $names 2>/dev/null | norm) || v=
  b=$(cd "$s" && ls -lnd -- $names | norm)
  [ "$a" = "$b" ] || v=
  case "$a" in *"
"[!-]*|[!-]*) v= ;; esac
fi
if [ -n "$v" ]; then
  if command -v cmp >/dev/null 2>&1; then
    for n in $names; do [ -z "$v" ] || cmp -s "$gen/$n" "$s/$n" || v=; done
  elif command -v sha256sum >/dev/null 2>&1; then
    [ "$(cd "$gen" && sha256sum -- $names)" = "$(cd "$s" && sha256sum -- $names)" ] || v=
  else
    v=
  fi
fi
[ -z "$v" ] || exit @UNCHANGED@
# Write: DSO's names cleared (or the container refused) before anything changes.
had=; [ ! -f .ready ] || [ -L .ready ] || [ ! -O .ready ] || had=1
old=; if [ -L ..data ] && [ -O ..data ]; then old=$(readlink ..data || true); fi
case "$old" in ..data_*[!0-9a-f]*|"$gen") old= ;; ..data_?*) ;; *) old= ;; esac
clr ..data; clr .ready
keep=
for n in $names; do
  if [ -L "$n" ] && [ -O "$n" ] && [ "$(readlink "$n")" = "..data/$n" ]; then keep="$keep $n"; else clr "$n"; fi
done
rmg "$gen"
chmod 0755 "$s"
mv "$s" "$gen"
trap - EXIT
ln -s "$gen" ..dso_link
mv -T -f ..dso_link ..data
for n in $names; do
  case " $keep " in *" $n "*) ;; *) ln -s "..data/$n" ..dso_link; mv -T -f ..dso_link "$n" ;; esac
done
[ -z "$old" ] || rmg "$old"
printf '%s\n' "$g" > ..dso_ready
chmod 0444 ..dso_ready
mv -f ..dso_ready .ready
[ -z "$had" ] || echo replaced
