"""The tutorial's code, verbatim in behaviour, as one app: the reference that the
compatibility tests compare Switchboard against byte for byte, and baseline (a) of the
benchmarks. Run: ``uvicorn bench.tutorial_app:app``. Not part of Switchboard."""

# ruff: noqa
import base64
import json
import zlib
from typing import Dict

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

app = FastAPI()


@app.websocket("/ws")
async def websocket_endpoint(websocket: WebSocket):
    await websocket.accept()
    try:
        while True:
            data = await websocket.receive_text()
            await websocket.send_text(f"Echo: {data}")
    except Exception as e:
        print(f"Error: {e}")
    finally:
        await websocket.close()


@app.websocket("/ws/json")
async def websocket_json_endpoint(websocket: WebSocket):
    await websocket.accept()
    try:
        while True:
            data_str = await websocket.receive_text()
            try:
                data = json.loads(data_str)
                response_data = {
                    "original_message": data,
                    "response": f"Server received your JSON with {len(data)} fields",
                }
                await websocket.send_json(response_data)
            except json.JSONDecodeError:
                await websocket.send_text("Error: Invalid JSON format")
    except Exception as e:
        print(f"Error: {e}")
    finally:
        await websocket.close()


@app.websocket("/ws/binary")
async def websocket_binary_endpoint(websocket: WebSocket):
    await websocket.accept()
    try:
        while True:
            data = await websocket.receive_bytes()
            size = len(data)
            base64_data = base64.b64encode(data).decode("utf-8")
            await websocket.send_text(
                f"Received binary data of size {size} bytes. "
                f"First 20 bytes in base64: {base64_data[:20]}..."
            )
            await websocket.send_bytes(data)
    except Exception as e:
        print(f"Error: {e}")
    finally:
        await websocket.close()


@app.websocket("/ws/mixed")
async def websocket_mixed_endpoint(websocket: WebSocket):
    await websocket.accept()
    try:
        while True:
            message = await websocket.receive()
            if "text" in message:
                text_data = message["text"]
                await websocket.send_text(f"You sent a text message: {text_data}")
            elif "bytes" in message:
                binary_data = message["bytes"]
                size = len(binary_data)
                await websocket.send_text(f"You sent a binary message of size {size} bytes")
            else:
                await websocket.send_text("Received unknown message type")
    except Exception as e:
        print(f"Error: {e}")
    finally:
        await websocket.close()


class ConnectionManager:
    def __init__(self):
        self.active_connections: Dict[str, WebSocket] = {}

    async def connect(self, websocket: WebSocket, username: str):
        await websocket.accept()
        self.active_connections[username] = websocket

    def disconnect(self, username: str):
        if username in self.active_connections:
            del self.active_connections[username]

    async def broadcast(self, message: str, sender: str, type: str = "message"):
        payload = {"message": message, "sender": sender, "type": type}
        for username, connection in list(self.active_connections.items()):
            await connection.send_json(payload)


manager = ConnectionManager()


@app.websocket("/ws/chat")
async def websocket_chat_endpoint(websocket: WebSocket, username: str = "Anonymous"):
    await manager.connect(websocket, username)
    await manager.broadcast(f"{username} has joined the chat", "Server", "system")
    try:
        while True:
            data_str = await websocket.receive_text()
            data = json.loads(data_str)
            await manager.broadcast(f"{username}: {data['message']}", username)
    except WebSocketDisconnect:
        manager.disconnect(username)
        await manager.broadcast(f"{username} has left the chat", "Server", "system")
    except Exception as e:
        print(f"Error: {e}")
        manager.disconnect(username)


@app.websocket("/ws/compressed")
async def websocket_compressed(websocket: WebSocket):
    await websocket.accept()
    try:
        while True:
            compressed_data = await websocket.receive_bytes()
            try:
                decompressed_data = zlib.decompress(compressed_data)
                decompressed_size = len(decompressed_data)
                await websocket.send_json(
                    {
                        "status": "success",
                        "message": f"Received and decompressed {len(compressed_data)} bytes into {decompressed_size} bytes",
                        "compression_ratio": f"{len(compressed_data) / decompressed_size:.2f}",
                    }
                )
            except zlib.error:
                await websocket.send_json(
                    {"status": "error", "message": "Failed to decompress data"}
                )
    except WebSocketDisconnect:
        print("Client disconnected")
    except Exception as e:
        print(f"Error: {e}")
