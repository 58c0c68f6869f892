"""`magledger demo`: the story of SPEC 0, told through the store, then audited.

A Chinese magnet maker exports a licensed lot to an Indian importer for domestic automotive
use. The importer splits it: one part goes to an Indian motor maker, one is used up at home,
and one is re-shipped to the United States. The motor maker builds motors (2% magnet by mass)
and exports some; a vehicle maker builds a car in which the magnet is 0.04% of the mass and
exports it. The audit catches the re-shipment and the motor export (governed by the magnets'
licence), and not the car (below the de minimis share).
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from ledger.events import format_time, parse_event
from ledger.services import Ledger

CAST = {
    "baotou-magnets": ("Baotou Rare Earth Magnets", "CN", "partner"),
    "mumbai-imports": ("Mumbai Magnet Imports", "IN", "partner"),
    "pune-motors": ("Pune Traction Motors", "IN", "partner"),
    "chennai-auto": ("Chennai Automotive", "IN", "partner"),
    "detroit-motors": ("Detroit Motors", "US", "partner"),
    "mofcom": ("Ministry of Commerce (export control)", "CN", "regulator"),
    "audit-co": ("Audit Co", "IN", "auditor"),
}


def run_demo(ledger: Ledger) -> str:
    actors = {}
    for party_id, (name, country, role) in CAST.items():
        existing = ledger.parties.get(party_id)
        actors[party_id] = existing or ledger.parties.register(party_id, name, country, role)[0]
    tag = uuid.uuid4().hex[:6].upper()
    lot, motors, car = f"CN-BTM-{tag}", f"IN-PTM-MOTORS-{tag}", f"IN-CHA-CAR-{tag}"
    parts = {"motors": f"{lot}-1", "home": f"{lot}-2", "usa": f"{lot}-3"}
    day = [ledger.store.clock() - timedelta(days=60)]

    def post(party_id: str, type_: str, batch_id: str, data: dict) -> None:
        day[0] += timedelta(days=1)
        raw = {"event_id": str(uuid.uuid4()), "type": type_, "batch_id": batch_id,
               "occurred_at": format_time(day[0]), "data": data}
        ledger.store.append(actors[party_id], [parse_event(raw, ledger.store.clock())])

    def ship(sender: str, batch_id: str, ref: str, receiver: str, mass: str) -> None:
        post(sender, "custody.shipped", batch_id, {"shipment_ref": f"{ref}-{tag}", "to_party": receiver,
                                                   "mass_kg": mass})
        post(receiver, "custody.received", batch_id, {"shipment_ref": f"{ref}-{tag}", "mass_kg": mass})

    post("baotou-magnets", "batch.registered", lot, {"material": "sintered NdFeB N52 (Dy, Tb)", "mass_kg": "1000",
                                                      "origin_country": "CN"})
    post("baotou-magnets", "enduse.declared", lot, {
        "licence_id": f"CN-EUL-{tag}", "permitted_countries": ["IN"], "end_use": "domestic automotive motors",
        "issuing_authority": "MOFCOM", "licensed_mass_kg": "1000"})
    ship("baotou-magnets", lot, "BL-CN-IN", "mumbai-imports", "1000")
    post("mumbai-imports", "batch.split", lot, {"children": [
        {"batch_id": parts["motors"], "mass_kg": "600"}, {"batch_id": parts["home"], "mass_kg": "300"},
        {"batch_id": parts["usa"], "mass_kg": "100"}]})
    ship("mumbai-imports", parts["motors"], "LR-MUM-PUN", "pune-motors", "600")
    ship("mumbai-imports", parts["home"], "LR-MUM-PUN-2", "pune-motors", "300")
    post("pune-motors", "batch.consumed", parts["home"], {"mass_kg": "300", "disposition": "consumed",
                                                         "note": "fitted in motors sold in India"})
    post("mumbai-imports", "custody.shipped", parts["usa"], {"shipment_ref": f"BL-IN-US-{tag}",
                                                             "to_party": "detroit-motors", "mass_kg": "100"})
    post("pune-motors", "batch.transformed", motors, {"inputs": [{"batch_id": parts["motors"], "mass_kg": "600"}],
                                                      "product": "traction motors", "mass_kg": "30000",
                                                      "units": 1000})
    ship("pune-motors", motors, "LR-PUN-CHE", "chennai-auto", "1500")
    post("pune-motors", "custody.exported", motors, {"to_country": "DE", "customs_ref": f"SB-{tag}",
                                                     "mass_kg": "3000"})
    post("chennai-auto", "batch.transformed", car, {"inputs": [{"batch_id": motors, "mass_kg": "30"}],
                                                    "product": "passenger car", "mass_kg": "1500"})
    post("chennai-auto", "custody.exported", car, {"to_country": "US", "customs_ref": f"SB-CAR-{tag}"})

    report = ledger.audits.run(ledger.audits.request("full", "audit-co")["audit_id"])
    lines = [f"magledger demo: the story of SPEC 0 (batch ids tagged {tag})", "",
             f"{'batch':<32} {'verdict':<9} findings"]
    for batch_id in (lot, parts["motors"], parts["home"], parts["usa"], motors, car):
        verdict = ledger.diversion.verdict(batch_id)
        rules = sorted({f["rule"] for f in verdict["findings"]})
        lines.append(f"{batch_id:<32} {verdict['verdict']:<9} {', '.join(rules) or '-'}")
    summary = (f"audit {report['audit_id']} ({report['scope']}) as of position {report['as_of_position']}: "
               f"{report['batches_checked']} batches checked, {report['findings_total']} findings")
    lines += ["", summary, f"{'rule':<28} findings"]
    lines += [f"{rule:<28} {count}" for rule, count in report["counts"].items()]
    ours = [b for b in report["diverted_batches"] if tag in b]
    lines += ["", "diverted: " + (", ".join(ours) or "none")]
    return "\n".join(lines)
