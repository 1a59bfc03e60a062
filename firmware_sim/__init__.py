"""firmware_sim: a simulated plant served over the real protocols on real sockets.

Pumps, tanks and a boiler stepped in simulated time with a seed, served over Modbus TCP (pymodbus),
OPC UA (asyncua) and MQTT (JSON telemetry to a broker), with fault scenarios for tests and the
demo. It imports nothing of tagway: it talks to the gateway only over the wire, exactly as a plant
would.
"""
