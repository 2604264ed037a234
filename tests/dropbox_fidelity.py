"""Fidelity of the fake Dropbox, judged by the official Python SDK (dropbox 12.x).

Run by tests/dropbox_fidelity.rs against a running fake: python dropbox_fidelity.py BASE_URL.
Every SDK call decodes the fake's answer with the SDK's own validators; listings and other
results are also decoded strictly (unknown fields rejected). Exits non-zero on any mismatch.
"""

import hashlib
import hmac
import http.server
import json
import sys
import threading

import dropbox
import requests
from dropbox import files
from dropbox.exceptions import ApiError, AuthError, InternalServerError, RateLimitError
from stone.backends.python_rsrc import stone_serializers

BASE = sys.argv[1].rstrip("/")
APP_KEY, APP_SECRET, REFRESH = "fake-app-key", "fake-app-secret", "fake-refresh-token"
HOSTS = ("https://api.dropboxapi.com", "https://content.dropboxapi.com", "https://notify.dropboxapi.com")
checks = 0


class LocalSession(requests.Session):
    def request(self, method, url, *a, **kw):
        for h in HOSTS:
            if url.startswith(h):
                url = BASE + url[len(h):]
        return super().request(method, url, *a, **kw)


def check(cond, what):
    global checks
    if not cond:
        raise AssertionError(what)
    checks += 1


def strict(validator, obj, what):
    """Decodes obj strictly (unknown fields are errors); returns the decoded value."""
    try:
        v = stone_serializers.json_compat_obj_decode(validator, obj, strict=True)
    except Exception as e:  # noqa: BLE001 - any decoding failure is a fidelity failure
        raise AssertionError(f"{what}: strict decode failed: {e}\n{json.dumps(obj)[:2000]}")
    check(True, what)
    return v


def faults(**f):
    r = requests.put(BASE + "/_fake/faults", json=f, timeout=10)
    r.raise_for_status()


session = LocalSession()
raw_token = {"t": None}


def raw(route, arg):
    """A raw RPC call with the current token, for strict decoding of the JSON itself."""
    r = session.post(
        f"https://api.dropboxapi.com/2/{route}",
        data=json.dumps(arg),
        headers={"Authorization": f"Bearer {dbx._oauth2_access_token}", "Content-Type": "application/json"},
        timeout=10,
    )
    check(r.headers.get("content-type") == "application/json", f"{route}: Content-Type exactly application/json")
    return r.status_code, r.json()


# Refresh: the SDK obtains its first token from the refresh token.
dbx = dropbox.Dropbox(
    oauth2_refresh_token=REFRESH, app_key=APP_KEY, app_secret=APP_SECRET,
    session=session, max_retries_on_error=0, max_retries_on_rate_limit=0,
)
dbx.check_and_refresh_access_token()
check(dbx._oauth2_access_token, "refresh gave an access token")

# A webhook receiver, to check the fake's signatures independently.
received = []


class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        received.append((body, self.headers.get("X-Dropbox-Signature")))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *a):
        pass


hook = http.server.HTTPServer(("127.0.0.1", 0), Hook)
threading.Thread(target=hook.serve_forever, daemon=True).start()
requests.put(BASE + "/_fake/webhook", json={"url": f"http://127.0.0.1:{hook.server_port}/hook"}, timeout=10).raise_for_status()

# Add.
r = dbx.files_create_folder_v2("/Fid")
check(isinstance(r.metadata, files.FolderMetadata) and r.metadata.path_display == "/Fid", "create_folder_v2")
meta = dbx.files_upload(b"hello", "/Fid/a.txt", mode=files.WriteMode.add)
check(isinstance(meta, files.FileMetadata) and meta.size == 5, "upload (add)")
check(len(meta.rev) >= 9 and all(c in "0123456789abcdef" for c in meta.rev), "rev is hex, 9+ characters")
expected_hash = hashlib.sha256(hashlib.sha256(b"hello").digest()).hexdigest()
check(meta.content_hash == expected_hash, "content_hash is the block hash")
dbx.files_upload(b"x" * 10, "/Fid/Ünïcode ✓.txt", mode=files.WriteMode.add)
for i in range(3):
    dbx.files_upload(f"n{i}".encode(), f"/Fid/many/{i}.txt")

# List, in pages, decoded by the SDK and strictly.
res = dbx.files_list_folder("/Fid", recursive=True, limit=2)
check(len(res.entries) == 2 and res.has_more, "list_folder pages")
status, obj = raw("files/list_folder", {"path": "/Fid", "recursive": True, "limit": 2})
check(status == 200, "raw list_folder")
strict(files.ListFolderResult_validator, obj, "list_folder strict")
seen = [e.path_display for e in res.entries]
cursor = res.cursor
while res.has_more:
    status, obj = raw("files/list_folder/continue", {"cursor": cursor})
    strict(files.ListFolderResult_validator, obj, "list_folder/continue (listing) strict")
    res = dbx.files_list_folder_continue(cursor)
    cursor = res.cursor
    seen += [e.path_display for e in res.entries]
check("/Fid/Ünïcode ✓.txt" in seen and "/Fid/many/2.txt" in seen, f"listing complete: {seen}")
status, obj = raw("files/list_folder/get_latest_cursor", {"path": "/Fid", "recursive": True})
strict(files.ListFolderGetLatestCursorResult_validator, obj, "get_latest_cursor strict")
latest = dbx.files_list_folder_get_latest_cursor("/Fid", recursive=True).cursor

# Edit over the known revision; a stale revision is a conflict.
edited = dbx.files_upload(b"hello again", "/Fid/a.txt", mode=files.WriteMode.update(meta.rev))
check(edited.id == meta.id and edited.rev != meta.rev, "upload (update) keeps the id, new rev")
try:
    dbx.files_upload(b"stale", "/Fid/a.txt", mode=files.WriteMode.update(meta.rev))
    check(False, "a stale rev must conflict")
except ApiError as e:
    check(e.error.is_path() and e.error.get_path().reason.is_conflict(), "stale rev: UploadError path conflict")

# Metadata and download.
m = dbx.files_get_metadata("/Fid/a.txt")
check(isinstance(m, files.FileMetadata) and m.rev == edited.rev, "get_metadata")
status, obj = raw("files/get_metadata", {"path": "/Fid/a.txt"})
strict(files.Metadata_validator, obj, "get_metadata strict")
try:
    dbx.files_get_metadata("/Fid/nope.txt")
    check(False, "missing path must fail")
except ApiError as e:
    check(e.error.is_path() and e.error.get_path().is_not_found(), "get_metadata not_found")
md, resp = dbx.files_download("/Fid/a.txt")
check(resp.content == b"hello again" and md.rev == edited.rev, "download")
md, resp = dbx.files_download("/Fid/Ünïcode ✓.txt")
check(md.name == "Ünïcode ✓.txt", "download of a non-ASCII name (escaped Dropbox-API-Result)")

# Move and delete.
moved = dbx.files_move_v2("/Fid/a.txt", "/Fid/sub/b.txt")
check(isinstance(moved.metadata, files.FileMetadata) and moved.metadata.id == meta.id, "move_v2 keeps the id")
try:
    dbx.files_move_v2("/Fid/nope", "/Fid/x")
    check(False, "moving nothing must fail")
except ApiError as e:
    check(e.error.is_from_lookup() and e.error.get_from_lookup().is_not_found(), "move_v2 from_lookup not_found")
try:
    dbx.files_create_folder_v2("/Fid/sub")
    check(False, "an existing folder must conflict")
except ApiError as e:
    check(e.error.is_path() and e.error.get_path().is_conflict(), "create_folder_v2 conflict")
deleted = dbx.files_delete_v2("/Fid/many")
check(isinstance(deleted.metadata, files.FolderMetadata), "delete_v2 returns the entry as it was")
try:
    dbx.files_delete_v2("/Fid/many")
    check(False, "deleting twice must fail")
except ApiError as e:
    check(e.error.is_path_lookup() and e.error.get_path_lookup().is_not_found(), "delete_v2 path_lookup not_found")

# Continue from the latest cursor: every change since, strictly decoded.
status, obj = raw("files/list_folder/continue", {"cursor": latest})
strict(files.ListFolderResult_validator, obj, "list_folder/continue (changes) strict")
res = dbx.files_list_folder_continue(latest)
kinds = [(type(e).__name__, e.path_display) for e in res.entries]
check(("DeletedMetadata", "/Fid/a.txt") in kinds, f"move shows the old path deleted: {kinds}")
check(("FileMetadata", "/Fid/sub/b.txt") in kinds, f"move shows the new path: {kinds}")
check(("DeletedMetadata", "/Fid/many") in kinds, f"delete shows a deleted entry: {kinds}")
new_ids = {e.id for e in res.entries if isinstance(e, files.FileMetadata)}
check(meta.id in new_ids, "the moved file keeps its id in the listing")
after = dbx.files_list_folder_continue(res.cursor)
check(after.entries == [] and not after.has_more, "nothing more after the end")

# Webhook notifications are signed with the app secret.
check(received, "the fake sent notifications")
for body, sig in received:
    good = hmac.new(APP_SECRET.encode(), body, hashlib.sha256).hexdigest()
    check(sig == good, "notification signature")
    check("list_folder" in json.loads(body), "notification body")

# Reset.
faults(reset_cursors=True)
try:
    dbx.files_list_folder_continue(after.cursor)
    check(False, "a reset cursor must fail")
except ApiError as e:
    check(e.error.is_reset(), "continue after reset: ListFolderContinueError reset")

# 429, as JSON and as text, with Retry-After.
faults(rate_limit_json=1, retry_after=3)
try:
    dbx.files_get_metadata("/Fid/sub")
    check(False, "429 expected")
except RateLimitError as e:
    check(e.backoff == 3 and e.error is not None and e.error.reason.is_too_many_requests(), "429 JSON decodes")
faults(rate_limit_text=1, retry_after=2)
try:
    dbx.files_get_metadata("/Fid/sub")
    check(False, "429 expected")
except RateLimitError as e:
    check(e.backoff == 2 and e.error is None, "429 text with Retry-After")

# 5xx.
faults(server_errors=1)
try:
    dbx.files_get_metadata("/Fid/sub")
    check(False, "500 expected")
except InternalServerError as e:
    check(e.status_code == 500, "5xx")

# Expired token: the SDK refreshes once and retries.
old = dbx._oauth2_access_token
faults(expire_tokens=True)
m = dbx.files_get_metadata("/Fid/sub")
check(isinstance(m, files.FolderMetadata) and dbx._oauth2_access_token != old, "expired token refreshed")
stale = dropbox.Dropbox(oauth2_access_token=old, session=session, max_retries_on_error=0)
try:
    stale.files_get_metadata("/Fid/sub")
    check(False, "an expired token must fail")
except AuthError as e:
    check(e.error.is_expired_access_token(), "401 expired_access_token decodes")

# A bad refresh token.
bad = dropbox.Dropbox(oauth2_refresh_token="wrong", app_key=APP_KEY, app_secret=APP_SECRET, session=session)
try:
    bad.check_and_refresh_access_token()
    check(False, "a bad refresh token must fail")
except AuthError as e:
    check(e.error.is_invalid_access_token(), "invalid_grant")

# Bad requests are plain-text 400s.
r = session.post(f"{BASE}/2/files/list_folder", data=json.dumps({"path": "/"}),
                 headers={"Authorization": f"Bearer {dbx._oauth2_access_token}", "Content-Type": "application/json"})
check(r.status_code == 400 and r.headers["content-type"].startswith("text/plain"), "path '/' is a 400")

hook.shutdown()
print(f"OK {checks} checks")
