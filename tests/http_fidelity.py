"""The fake HTTP API judged by real clients of the systems it imitates.

- HubSpot's official Python SDK (`hubspot-api-client`) pages contacts with `after`, reads all of
  them, creates, reads (by id, and by email with `idProperty`), updates and archives one, and
  meets HubSpot's error answers;
- `requests-oauthlib` (over `oauthlib`) takes a client-credentials token from the fake's token
  endpoint, with HTTP Basic and with form credentials, uses it, and is refused a wrong secret;
- `requests` reads the `Link` header of the GitHub-style listing (RFC 8288).

Usage: http_fidelity.py <bearer fake url> <token> <n contacts> <oauth2 fake url> <client id> <secret>
Prints `OK <n> checks`.
"""

import datetime
import os
import sys

os.environ["OAUTHLIB_INSECURE_TRANSPORT"] = "1"  # the fake speaks plain HTTP on 127.0.0.1

import requests
from hubspot import HubSpot
from hubspot.crm.contacts import ApiException, SimplePublicObjectInput, SimplePublicObjectInputForCreate
from oauthlib.oauth2 import BackendApplicationClient, InvalidClientError
from requests_oauthlib import OAuth2Session

url, token, n_contacts, oauth_url, client_id, secret = sys.argv[1:7]
n_contacts = int(n_contacts)
checks = 0


def check(cond, what):
    global checks
    if not cond:
        raise AssertionError(what)
    checks += 1


# HubSpot's SDK.
api = HubSpot(access_token=token, host=url)
basic = api.crm.contacts.basic_api
page = basic.get_page(limit=2, properties=["email", "firstname"])
check(len(page.results) == 2, f"a page of 2: {page}")
first = page.results[0]
check(isinstance(first.id, str) and first.properties["email"], f"an id and properties: {first}")
check(isinstance(first.created_at, datetime.datetime) and isinstance(first.updated_at, datetime.datetime), "times parse")
check(first.archived is False, "not archived")
check(page.paging is not None and page.paging.next.after, "a next page")
page2 = basic.get_page(limit=2, after=page.paging.next.after)
check(page2.results[0].id not in {r.id for r in page.results}, "the next page goes on")
everyone = api.crm.contacts.get_all()
check(len(everyone) == n_contacts, f"get_all follows every page: {len(everyone)}")
check(len({c.id for c in everyone}) == n_contacts, "no contact twice")
last = basic.get_page(limit=100)
check(last.paging is None, "no paging on the last page")

made = basic.create(SimplePublicObjectInputForCreate(properties={"email": "new.person@example.com", "firstname": "New"}))
check(made.id and made.properties["email"] == "new.person@example.com", f"created: {made}")
check(made.properties.get("hs_object_id") == made.id, "hs_object_id")
got = basic.get_by_id(made.id, properties=["email", "firstname"])
check(got.properties["firstname"] == "New", "read back")
upd = basic.update(made.id, SimplePublicObjectInput(properties={"lastname": "Person"}))
check(upd.properties["lastname"] == "Person" and upd.properties["firstname"] == "New", "a partial update")
check(upd.updated_at >= made.updated_at, "updatedAt moves")
# A contact read by its unique email (`idProperty`), as recsync's `search` does; the SDK puts
# the email in the path, percent-encoded.
by_email = basic.get_by_id("New.Person@example.com", id_property="email", properties=["email", "firstname"])
check(by_email.id == made.id and by_email.properties["firstname"] == "New", f"read by email: {by_email}")
try:
    basic.get_by_id("nobody@example.com", id_property="email")
    check(False, "an unknown email")
except ApiException as e:
    check(e.status == 404 and "OBJECT_NOT_FOUND" in e.body, f"404 by email: {e.body}")

try:
    basic.create(SimplePublicObjectInputForCreate(properties={"email": "not-an-email"}))
    check(False, "a bad email is refused")
except ApiException as e:
    check(e.status == 400 and "INVALID_EMAIL" in e.body and "VALIDATION_ERROR" in e.body, f"400: {e.body}")
try:
    basic.create(SimplePublicObjectInputForCreate(properties={"email": "new.person@example.com"}))
    check(False, "a taken email is refused")
except ApiException as e:
    check(e.status == 409 and "Existing ID" in e.body, f"409: {e.body}")
try:
    basic.update("999999", SimplePublicObjectInput(properties={"lastname": "x"}))
    check(False, "an unknown id")
except ApiException as e:
    check(e.status == 404 and "OBJECT_NOT_FOUND" in e.body, f"404: {e.body}")

check(basic.archive(made.id) is None, "archive answers 204")
try:
    basic.get_by_id(made.id)
    check(False, "an archived contact is not read without archived=true")
except ApiException as e:
    check(e.status == 404, f"404 after archive: {e.status}")
archived = basic.get_page(limit=100, archived=True)
check([c.id for c in archived.results] == [made.id], "listed with archived=true")
check(archived.results[0].archived is True, "marked archived")

wrong = HubSpot(access_token="wrong-token", host=url)
try:
    wrong.crm.contacts.basic_api.get_page(limit=1)
    check(False, "a wrong token is refused")
except ApiException as e:
    check(e.status == 401, f"401: {e.status}")

# requests reads the Link header.
r = requests.get(f"{url}/v1/link_header/items", params={"per_page": 2}, headers={"Authorization": f"Bearer {token}"})
check(r.status_code == 200 and len(r.json()) == 2, "a bare list")
check("next" in r.links and "page=2" in r.links["next"]["url"], f"rel=next: {r.headers.get('Link')}")
r2 = requests.get(r.links["next"]["url"], headers={"Authorization": f"Bearer {token}"})
check(r2.json()[0]["id"] != r.json()[0]["id"], "the next page goes on")

# OAuth 2.0 client credentials through oauthlib.
token_url = f"{oauth_url}/oauth/token"
session = OAuth2Session(client=BackendApplicationClient(client_id=client_id))
tok = session.fetch_token(token_url=token_url, client_id=client_id, client_secret=secret)
check(tok["access_token"] and tok["token_type"] == "Bearer" and tok["expires_in"] > 0, f"a token: {tok}")
r = session.get(f"{oauth_url}/v1/next_url/items", params={"limit": 2})
check(r.status_code == 200 and "items" in r.json(), f"the token works: {r.status_code}")
body_session = OAuth2Session(client=BackendApplicationClient(client_id=client_id))
tok2 = body_session.fetch_token(token_url=token_url, client_id=client_id, client_secret=secret, include_client_id=True)
check(tok2["access_token"] != tok["access_token"], "form credentials work too")
check(requests.get(f"{oauth_url}/v1/next_url/items", headers={"Authorization": "Bearer nope"}).status_code == 401, "an unknown token is refused")
try:
    OAuth2Session(client=BackendApplicationClient(client_id=client_id)).fetch_token(
        token_url=token_url, client_id=client_id, client_secret="wrong"
    )
    check(False, "a wrong secret is refused")
except InvalidClientError as e:
    check("Client authentication failed" in str(e.description), f"invalid_client: {e}")

print(f"OK {checks} checks")
