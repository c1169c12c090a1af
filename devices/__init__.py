"""The board-side files every exported bundle carries (installed as slicenet.boards).

Nothing here imports torch or slicenet: run_engine.py runs on a Jetson Nano's Python 3.6 or a host with
only OpenVINO 2022.3 and numpy.
"""
