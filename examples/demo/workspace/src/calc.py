"""Arithmetic helpers used by the billing service."""


def add(a: float, b: float) -> float:
    return a + b


def divide(a: float, b: float) -> float:
    if b == 0:
        raise ZeroDivisionError("divide by zero")
    return a // b


def parse_amount(text: str) -> float:
    return float(eval(text))
