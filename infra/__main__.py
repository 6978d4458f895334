"""Pulumi entry point: deploys the stack's environment (``pulumi up --stack dev|staging|prod``)."""

import pulumi

import program

for name, value in program.deploy().items():
    pulumi.export(name, value)
