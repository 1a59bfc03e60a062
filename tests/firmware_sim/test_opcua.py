"""OPC UA served to an independent asyncua client: browse, read, faults, security."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from asyncua import Client, ua
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256

from firmware_sim.faults import LinkDrop, OpcuaServerDown, OpcuaStatus
from firmware_sim.opcua_server import NAMESPACE_URI, client_certificate
from firmware_sim.plant import Plant

pytestmark = pytest.mark.integration


async def test_browse_read_units_ranges_timestamps_and_fault_statuses() -> None:
    async with Plant(devices=4, seed=8, tick_s=None, modbus=False, control_port=None) as plant:
        for _ in range(20):
            plant.step(1.0)
        assert plant.opcua is not None
        await plant.opcua.publish()
        async with Client(plant.opcua.endpoint, timeout=10) as client:
            ns = await client.get_namespace_index(NAMESPACE_URI)
            folders = {
                (await n.read_browse_name()).Name: n
                for n in await client.nodes.objects.get_children()
            }
            assert {"pump1", "pump2", "tank1", "boiler1"} <= folders.keys()
            simulated = await folders["pump1"].get_child(["0:Simulated"])
            assert await simulated.read_value() is True

            flow = client.get_node(ua.NodeId("pump1.flow", ns))
            data = await flow.read_data_value()
            assert data.Value.Value == pytest.approx(plant.model.reported("pump1")["flow"])
            assert data.SourceTimestamp is not None
            assert data.StatusCode.is_good()
            # Types follow the register map: a float32 register is a Float (a PLC's REAL), a
            # value scaled from an integer register a Double.
            assert data.Value.VariantType == ua.VariantType.Float
            assert await flow.read_data_type() == ua.NodeId(ua.ObjectIds.Float)
            percent = client.get_node(ua.NodeId("tank1.level_percent", ns))
            assert (await percent.read_data_value()).Value.VariantType == ua.VariantType.Double
            eu_range = await (await flow.get_child(["0:EURange"])).read_value()
            units = await (await flow.get_child(["0:EngineeringUnits"])).read_value()
            assert (eu_range.Low, eu_range.High) == (0.0, 150.0)
            assert units.DisplayName.Text == "m3/h"
            children = await folders["tank1"].get_children()
            assert len(children) == len(plant.model.maps["tank1"].tags) + 1  # + Simulated

            plant.add_fault(OpcuaStatus(device="pump1", tag="vibration", status="bad"))
            plant.add_fault(OpcuaStatus(device="pump2", status="uncertain"))
            plant.add_fault(LinkDrop(device="tank1"))
            await plant.opcua.publish()
            vib = await client.get_node(ua.NodeId("pump1.vibration", ns)).read_data_value(
                raise_on_bad_status=False
            )
            assert vib.StatusCode.value == ua.StatusCodes.BadSensorFailure
            assert (await flow.read_data_value()).StatusCode.is_good()
            pump2 = await client.get_node(ua.NodeId("pump2.flow", ns)).read_data_value(
                raise_on_bad_status=False
            )
            assert pump2.StatusCode.is_uncertain()
            level = await client.get_node(ua.NodeId("tank1.level", ns)).read_data_value(
                raise_on_bad_status=False
            )
            assert level.StatusCode.value == ua.StatusCodes.BadNoCommunication

            plant.clear_faults()
            await plant.opcua.publish()
            assert (await flow.read_data_value()).StatusCode.is_good()


async def test_sign_and_encrypt_with_trusted_cert_and_refusal_of_untrusted(tmp_path: Path) -> None:
    trust = tmp_path / "trusted"
    trust.mkdir()
    trusted_cert, trusted_key = client_certificate(tmp_path / "clients", "trusted")
    stranger_cert, stranger_key = client_certificate(tmp_path / "clients", "stranger")
    shutil.copy(trusted_cert, trust)
    async with Plant(
        devices=1,
        tick_s=None,
        modbus=False,
        control_port=None,
        opcua_security="basic256sha256",
        opcua_cert_dir=tmp_path / "server",
        opcua_trust_dir=trust,
    ) as plant:
        assert plant.opcua is not None
        endpoint = plant.opcua.endpoint

        client = Client(endpoint, timeout=10)
        client.application_uri = "urn:tagway:firmware-sim:client:trusted"
        await client.set_security(
            SecurityPolicyBasic256Sha256,
            certificate=str(trusted_cert),
            private_key=str(trusted_key),
            mode=ua.MessageSecurityMode.SignAndEncrypt,
        )
        async with client:
            ns = await client.get_namespace_index(NAMESPACE_URI)
            value = await client.get_node(ua.NodeId("pump1.serial_number", ns)).read_value()
            assert value == plant.model.reported("pump1")["serial_number"]

        stranger = Client(endpoint, timeout=10)
        stranger.application_uri = "urn:tagway:firmware-sim:client:stranger"
        await stranger.set_security(
            SecurityPolicyBasic256Sha256,
            certificate=str(stranger_cert),
            private_key=str(stranger_key),
            mode=ua.MessageSecurityMode.SignAndEncrypt,
        )
        with pytest.raises(ua.UaStatusCodeError) as refused:
            await stranger.connect()
        assert refused.value.code == ua.StatusCodes.BadCertificateUntrusted
        await stranger.disconnect()

        anonymous = Client(endpoint, timeout=10)
        with pytest.raises(ua.UaError):
            await anonymous.connect()  # no None endpoint is offered
        await anonymous.disconnect()


async def test_server_down_is_connection_loss_and_the_port_comes_back() -> None:
    async with Plant(devices=1, tick_s=None, modbus=False, control_port=None) as plant:
        assert plant.opcua is not None
        endpoint = plant.opcua.endpoint
        client = Client(endpoint, timeout=3)
        await client.connect()
        ns = await client.get_namespace_index(NAMESPACE_URI)
        node = client.get_node(ua.NodeId("pump1.flow", ns))
        await node.read_value()
        plant.add_fault(OpcuaServerDown())
        await plant.opcua.watch_link_once()
        with pytest.raises((ConnectionError, ua.UaError, TimeoutError)):
            await node.read_value()
        await client.disconnect()
        with pytest.raises(ConnectionRefusedError):
            await Client(endpoint, timeout=2).connect()
        plant.clear_faults()
        await plant.opcua.watch_link_once()
        assert plant.opcua.endpoint == endpoint
        async with Client(endpoint, timeout=5) as again:
            ns = await again.get_namespace_index(NAMESPACE_URI)
            value = await again.get_node(ua.NodeId("pump1.flow", ns)).read_value()
            assert value == pytest.approx(plant.model.reported("pump1")["flow"])


async def test_every_step_reaches_a_subscription_once_without_waiting_for_the_interval() -> None:
    """A publish follows each model step (the interval here is far longer than the test), each
    step's value arrives once with a Good status, and a publish with nothing new writes nothing."""
    async with Plant(
        devices=1, tags_per_device=40, tick_s=None, modbus=False, control_port=None,
        opcua_publish_s=60.0,
    ) as plant:  # fmt: skip
        assert plant.opcua is not None
        seen: list[ua.DataValue] = []

        class Handler:
            def datachange_notification(self, node: object, val: object, data: object) -> None:
                seen.append(data.monitored_item.Value)  # type: ignore[attr-defined]

        async with Client(plant.opcua.endpoint, timeout=10) as client:
            ns = await client.get_namespace_index(NAMESPACE_URI)
            subscription = await client.create_subscription(50, Handler())
            aux = client.get_node(ua.NodeId("pump1.aux_0010", ns))
            await subscription.subscribe_data_change(aux)
            await asyncio.sleep(0.3)
            assert len(seen) == 1  # the current value, once
            expected = []
            for _ in range(3):
                plant.step(1.0)
                expected.append(plant.model.reported("pump1")["aux_0010"])
                await asyncio.sleep(0.3)
            assert [d.Value.Value for d in seen[1:]] == pytest.approx(expected, rel=1e-6)
            assert all(d.StatusCode.is_good() and d.SourceTimestamp for d in seen)
            assert await plant.opcua.publish() == 0  # nothing changed since the step's publish
            value = await aux.read_value()
            assert value == pytest.approx(expected[-1], rel=1e-6)
