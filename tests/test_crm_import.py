"""CSV import into the embedded CRM: bad rows reported by line, never half-written."""

from __future__ import annotations

from pathlib import Path

import pytest

import cti.crm
from cti.crm.importer import import_csv
from cti.crm.sqlite import SqliteCrm
from cti.errors import ConfigError, ImportRowError

HEADER = "customer_id,name,segment,phones,email,company,timezone,tags,products,do_not_call"

BROKEN = b"\xef\xbb\xbf" + "\n".join([
    HEADER,                                                                          # 1
    "CUST-5001,Ada Good,gold,mobile:+1 917 555 0101;fax:(212) 555-0102,ada@example.com,,"
    "America/New_York,vip;churn_risk,Fibre 1G;TV Plus,no",                           # 2
    "",                                                                              # 3
    "CUST-5002,Bad Zone,standard,+1 212 555 0103,,,Mars/Olympus,,,",                 # 4
    "CUST-5003,Bad Segment,diamond,+1 212 555 0104,,,,,,",                           # 5
    "CUST-5004,No Phone,standard,n/a;anonymous,,,,,,",                               # 6
    'CUST-5005,"Weber, Jonas",platinum,+49 30 1234567,j@example.de,Berlin GmbH,'
    "Europe/Berlin,,Fibre 1G,0",                                                     # 7
    "CUST-5006,Caf\x00 Latin1,standard,+1 212 555 0106,,,,,,",                       # 8
    "CUST-5001,Ada Updated,gold,mobile:+1 917 555 0101,ada@example.com,,"
    "America/New_York,vip,Fibre 1G,yes",                                             # 9
    "CUST-5007,Too,Few",                                                             # 10
    'CUST-5008,"Two',                                                                # 11
    'Lines",standard,+1 212 555 0108,,,,,,',                                         # 12
    "CUST-5009,Bad Dnc,standard,+1 212 555 0109,,,,,,maybe",                         # 13
    "CUST-5010,Junk Kept,standard,+1 212 555 0110;sdfasdf,,,,,,",                    # 14
    "bad id!,Bad Id,standard,+1 212 555 0111,not-an-email,,,,,",                     # 15
    "",
]).encode().replace(b"Caf\x00", b"Caf\xe9")     # line 8 is Latin-1, not UTF-8


@pytest.fixture
async def crm(tmp_path: Path):
    crm = SqliteCrm(tmp_path / "crm.sqlite3", "US")
    await crm.open()
    yield crm
    await crm.close()


def write(tmp_path: Path, data: bytes, name: str = "customers.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


async def test_broken_csv_reports_each_bad_row_by_line_and_keeps_the_good_ones(
        crm: SqliteCrm, tmp_path: Path) -> None:
    report = await import_csv(crm, write(tmp_path, BROKEN), "US", progress=False)

    assert (report.imported, report.updated) == (4, 1)
    assert report.rejected_lines == [4, 5, 6, 8, 10, 13, 15]
    problems = {(r.line, r.column): r.reason for r in report.rejected}
    assert "'Mars/Olympus'" in problems[(4, "timezone")]
    assert "'diamond'" in problems[(5, "segment")]
    assert "'n/a;anonymous'" in problems[(6, "phones")]
    assert "b'Caf\\xe9 Latin1'" in problems[(8, "name")]
    assert "got 3" in problems[(10, None)]
    assert "'maybe'" in problems[(13, "do_not_call")]
    assert {(15, "customer_id"), (15, "email")} <= set(problems)
    assert [(w.line, w.column) for w in report.warnings] == [(14, "phones")]
    assert await crm.customer_count() == 4


async def test_later_row_with_the_same_customer_id_updates_it(
        crm: SqliteCrm, tmp_path: Path) -> None:
    await import_csv(crm, write(tmp_path, BROKEN), "US", progress=False)
    ada = (await crm.lookup("+19175550101")).customer
    old_fax = await crm.lookup("+12125550102")

    assert ada.name == "Ada Updated" and ada.tags == ["vip"] and ada.do_not_call
    assert ada.products == ["Fibre 1G"]
    assert old_fax.status == "not_found"      # the update replaced the number list


async def test_rejected_rows_write_nothing(crm: SqliteCrm, tmp_path: Path) -> None:
    await import_csv(crm, write(tmp_path, BROKEN), "US", progress=False)
    for customer_id in ("CUST-5002", "CUST-5003", "CUST-5004", "CUST-5006", "CUST-5009"):
        assert await crm.get_customer(customer_id) is None
    for number in ("+12125550103", "+12125550104", "+12125550106", "+12125550111"):
        assert (await crm.lookup(number)).status == "not_found"


async def test_good_rows_are_stored_fully(crm: SqliteCrm, tmp_path: Path) -> None:
    await import_csv(crm, write(tmp_path, BROKEN), "US", progress=False)
    weber = (await crm.lookup("+49301234567")).customer
    two_lines = (await crm.lookup("+12125550108")).customer
    junk = crm.phones_of("CUST-5010")

    assert (weber.name, weber.segment, weber.company) == ("Weber, Jonas", "platinum",
                                                          "Berlin GmbH")
    assert weber.timezone == "Europe/Berlin" and weber.do_not_call is False
    assert two_lines.name == "Two\nLines"
    assert junk == [("phone", "+1 212 555 0110", "+12125550110"), ("phone", "sdfasdf", None)]


async def test_reimporting_the_same_file_changes_nothing(
        crm: SqliteCrm, tmp_path: Path) -> None:
    path = write(tmp_path, BROKEN)
    first = await import_csv(crm, path, "US", progress=False)
    before = {cid: (await crm.get_customer(cid)).as_dict()
              for cid in ("CUST-5001", "CUST-5005", "CUST-5008", "CUST-5010")}
    phones = crm.phones_of("CUST-5001")

    second = await import_csv(crm, path, "US", progress=True)   # not a tty: no bar

    assert (second.imported, second.updated) == (0, 5)
    assert second.rejected == first.rejected
    assert await crm.customer_count() == 4
    assert crm.phones_of("CUST-5001") == phones
    for cid, data in before.items():
        assert (await crm.get_customer(cid)).as_dict() == data


async def test_summary_names_counts_lines_and_values(crm: SqliteCrm, tmp_path: Path) -> None:
    report = await import_csv(crm, write(tmp_path, BROKEN), "US", progress=False)
    text = report.summary()

    assert text.splitlines()[0].endswith("4 imported, 1 updated, 7 rows rejected")
    assert "line 4, column 'timezone': timezone 'Mars/Olympus'" in text
    assert "line 14" in text and "sdfasdf" in text


async def test_header_without_a_required_column_is_refused_before_any_write(
        crm: SqliteCrm, tmp_path: Path) -> None:
    data = (HEADER.replace("phones", "phone") + "\nCUST-1,Ann,gold,+1 212 555 0101"
            ",,,,,,\n").encode()
    with pytest.raises(ImportRowError, match="missing column.*'phones'"):
        await import_csv(crm, write(tmp_path, data), "US", progress=False)
    assert await crm.is_empty()


async def test_file_without_a_header_names_what_the_first_line_should_be(
        crm: SqliteCrm, tmp_path: Path) -> None:
    data = b"CUST-1,Ann,gold,+1 212 555 0101,,,,,,\n"
    with pytest.raises(ImportRowError, match="'customer_id', 'name', 'phones'.*'CUST-1'"):
        await import_csv(crm, write(tmp_path, data), "US", progress=False)
    assert await crm.is_empty()


async def test_empty_or_missing_file(crm: SqliteCrm, tmp_path: Path) -> None:
    with pytest.raises(ImportRowError, match="empty"):
        await import_csv(crm, write(tmp_path, b"\xef\xbb\xbf\r\n\r\n"), "US", progress=False)
    with pytest.raises(ConfigError, match="nope.csv"):
        await import_csv(crm, tmp_path / "nope.csv", "US", progress=False)


async def test_windows_file_with_crlf_any_column_order_and_country_column(
        crm: SqliteCrm, tmp_path: Path) -> None:
    data = ("\ufeffName,Customer_ID,Phones,Country,Timezone\r\n"
            "Jonas,DE-1,030 1234567,DE,Europe/Berlin\r\n"
            "Zhang Wei,CN-1,138-0013-8000,CN,Asia/Shanghai\r\n"
            "Nowhere,XX-1,555 0101 999,ZZ,\r\n").encode("utf-8")
    report = await import_csv(crm, write(tmp_path, data), "US", progress=False)

    assert report.imported == 2
    assert [(r.line, r.column) for r in report.rejected] == [(4, "country")]
    assert (await crm.lookup("+49301234567")).customer.customer_id == "DE-1"
    assert (await crm.lookup("+8613800138000")).customer.customer_id == "CN-1"


async def test_demo_sample_file_imports_cleanly(crm: SqliteCrm) -> None:
    sample = Path(cti.crm.__file__).parent / "demo" / "customers.csv"
    report = await import_csv(crm, sample, "US", progress=False)

    assert report.rejected == [] and report.warnings == []
    assert report.imported == 5
    assert (await crm.lookup("+8613912345678")).customer.segment == "gold"
    assert (await crm.lookup("+49309876544")).customer.company == "Schmidt OHG"
    assert (await crm.lookup("2001")).customer.name == "Front Desk"
