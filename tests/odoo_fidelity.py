"""The fake Odoo as real Odoo clients see it.

Run by tests/odoo_fidelity.rs: `python odoo_fidelity.py <url> <database> <login> <password>
<api key>`. It drives the fake through `odoorpc` (JSON-RPC) and `odoo-client-lib` (JSON-RPC and
JSON-2) the way integrations use them, and prints `OK <n> checks` when every check held.
"""

import sys
import urllib.parse

import odoolib
import odoorpc
from odoolib.tools import AuthenticationError

url, db, login, password, api_key = sys.argv[1:6]
parsed = urllib.parse.urlparse(url)
host, port = parsed.hostname, parsed.port
checks = 0


def check(cond, what):
    global checks
    if not cond:
        raise AssertionError(what)
    checks += 1


def raises(fn, kind, what, contains=None):
    try:
        fn()
    except kind as e:
        check(contains is None or contains in str(e), f"{what}: {e}")
        return e
    raise AssertionError(f"{what}: no {kind.__name__} raised")


# ---- odoorpc, JSON-RPC ----
odoo = odoorpc.ODOO(host, port=port)
check(odoo.version == "19.0", f"version detected: {odoo.version}")
check(db in odoo.db.list(), "db.list names the database")
raises(lambda: odoo.login(db, login, "wrong"), odoorpc.error.RPCError, "a wrong password")
odoo.login(db, login, password)
check(odoo.env.uid == 2, "the user id")
check(odoo.env.user.name == "Mitchell Admin", "env.user reads res.users")
check(odoo.env.context.get("lang") == "en_US", "the user context")

Partner = odoo.env["res.partner"]
Country = odoo.env["res.country"]
Tag = odoo.env["res.partner.category"]
fields = Partner.fields_get()
check(fields["country_id"]["type"] == "many2one", "fields_get: many2one")
check(fields["country_id"]["relation"] == "res.country", "fields_get: relation")
check(fields["category_id"]["type"] == "many2many", "fields_get: many2many")
check(fields["name"]["required"] is True, "fields_get: required")
check(fields["write_date"]["readonly"] is True, "fields_get: readonly")

be = Country.search([("code", "=", "BE")])
check(len(be) == 1, "search by code")
tags = Tag.search([], order="name")
check(len(tags) == 3, "the seeded tags")
pid = Partner.create(
    {
        "name": "Conformance SA",
        "is_company": True,
        "country_id": be[0],
        "category_id": [(6, 0, tags[:2])],
        "email": "hello@conformance.example",
    }
)
check(isinstance(pid, int), "create answers an id")
child = Partner.create({"name": "Jane Conformance", "parent_id": pid})

rows = Partner.search_read([("country_id.code", "=", "BE")], ["name", "country_id", "category_id"])
check([r["name"] for r in rows] == ["Conformance SA"], "search_read through a dotted path")
check(rows[0]["country_id"] == [be[0], "Belgium"], f"many2one as [id, name]: {rows[0]['country_id']}")
check(rows[0]["category_id"] == tags[:2], "many2many as ids")
# Ids named with `in`, together with other conditions (the read before sending): only those
# ids, and only those that match the rest, whatever order the ids come in.
rows = Partner.search_read([("id", "in", [child, pid, 999999]), ("parent_id", "=", False)], ["name"])
check([r["id"] for r in rows] == [pid], f"id in [...] and another condition: {rows}")
rows = Partner.search_read(["|", ("id", "in", [pid]), ("name", "=", "Jane Conformance")], ["name"], order="id")
check([r["id"] for r in rows] == [pid, child], f"id in [...] under an OR: {rows}")

p = Partner.browse(pid)
check(p.name == "Conformance SA", "browse reads the record")
check(p.country_id.code == "BE", "a many2one is browsed as a record")
check(sorted(p.category_id.ids) == sorted(tags[:2]), "a many2many is browsed as records")
check(p.parent_id.id is False or not p.parent_id, "an empty many2one")
check([c.name for c in p.child_ids] == ["Jane Conformance"], "one2many through parent_id")
p.email = "new@conformance.example"  # auto_commit: one write
check(Partner.read([pid], ["email"])[0]["email"] == "new@conformance.example", "a write through a field")
Partner.write([pid], {"category_id": [(3, tags[0])]})
check(Partner.read([pid], ["category_id"])[0]["category_id"] == [tags[1]], "a (3, id) command")
check(Partner.search_count([("id", "child_of", pid)]) == 2, "child_of")
check(Partner.search([("name", "=ilike", "conformance%")]) == [pid], "=ilike")
check(Partner.search([("email", "=", False), ("name", "like", "Jane")]) == [child], "empty is false")

Partner.write([child], {"active": False})
check(Partner.search([("id", "=", child)]) == [], "an archived record is hidden")
check(
    Partner.search([("id", "=", child)], context={"active_test": False}) == [child],
    "active_test = False shows it",
)
check(Partner.search([("active", "=", False)]) == [child], "searching on active shows it")

# Keyset pages by (write_date, id), as recsync reads them: every record once, in order.
everything = [
    (r["write_date"], r["id"])
    for r in Partner.search_read([], ["write_date"], order="write_date asc, id asc, name",
                                 context={"active_test": False})
]
seen, after = [], None
while True:
    dom = [] if after is None else [
        "|", ("write_date", ">", after[0]), "&", ("write_date", "=", after[0]), ("id", ">", after[1])
    ]
    page = Partner.search_read(dom, ["write_date"], order="write_date asc, id asc", limit=2,
                               context={"active_test": False})
    if not page:
        break
    seen += [(r["write_date"], r["id"]) for r in page]
    after = seen[-1]
check(len(everything) >= 3 and seen == everything, f"keyset pages by write_date, id: {seen} vs {everything}")

raises(lambda: Partner.create({"email": "nobody@example.com"}), odoorpc.error.RPCError,
       "a missing required field", "mandatory")
Partner.unlink([child])
raises(lambda: Partner.read([child], ["name"]), odoorpc.error.RPCError, "a deleted record",
       "does not exist")
raises(lambda: odoo.execute_kw("res.partner", "no_such_method", [[]]), odoorpc.error.RPCError,
       "an unknown method")

# ---- odoo-client-lib, JSON-RPC ----
conn = odoolib.get_connection(hostname=host, port=port, protocol="jsonrpc", database=db,
                              login=login, password=api_key)
m = conn.get_model("res.partner")
ids = m.search([("name", "ilike", "conformance")])
check(ids == [pid], "odoolib JSON-RPC search with an API key")
r = m.read(pid, ["name", "country_id"])
check(r["country_id"][1] == "Belgium", "odoolib JSON-RPC read")
check(m.search_read([("id", "=", pid)], ["name"])[0]["name"] == "Conformance SA", "odoolib search_read")
check(conn.get_user_context()["uid"] == 2, "odoolib context_get")
bad = odoolib.get_connection(hostname=host, port=port, protocol="jsonrpc", database=db,
                             login=login, password="wrong")
raises(lambda: bad.get_model("res.partner").search([]), AuthenticationError,
       "odoolib JSON-RPC with a wrong password")

# ---- odoo-client-lib, JSON-2 ----
conn2 = odoolib.get_connection(hostname=host, port=port, protocol="json2", database=db,
                               password=api_key)
m2 = conn2.get_model("res.partner")
check(m2.search(domain=[("id", "=", pid)]) == [pid], "JSON-2 search by name")
check(m2.search([("id", "=", pid)]) == [pid], "JSON-2 search by position (introspected)")
rec = m2.read([pid], ["name", "country_id", "category_id"])
check(rec["name"] == "Conformance SA", "JSON-2 read of one record")
check(rec["country_id"] == [be[0], "Belgium"], "JSON-2 many2one")
new_ids = m2.create(vals_list=[{"name": "Json Two", "country_id": be[0]}])
check(isinstance(new_ids, list) and len(new_ids) == 1, f"JSON-2 create answers ids: {new_ids}")
check(m2.write(new_ids, {"name": "Json Two Renamed"}) is True, "JSON-2 write by position")
check(m2.search_read(domain=[("id", "in", new_ids)], fields=["name"])[0]["name"] == "Json Two Renamed",
      "JSON-2 search_read")
check(m2.search_count(domain=[("country_id.code", "=", "BE")]) == 2, "JSON-2 search_count")
check(m2.fields_get(attributes=["type"])["category_id"] == {"type": "many2many"}, "JSON-2 fields_get attributes")
check(m2.unlink(new_ids) is True, "JSON-2 unlink")
raises(lambda: m2.read(new_ids, ["name"]), ValueError, "JSON-2 a deleted record", "MissingError")
raises(lambda: m2.create(vals_list=[{"email": "x@example.com"}]), ValueError,
       "JSON-2 a validation error is a 422", "Invalid request")
wrong = odoolib.get_connection(hostname=host, port=port, protocol="json2", database=db,
                               password="wrong-key")
raises(lambda: wrong.get_model("res.partner").search(domain=[]), AuthenticationError,
       "JSON-2 with a wrong key")

print(f"OK {checks} checks")
