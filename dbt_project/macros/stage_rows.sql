{#
  The rows of one stage across every dataset, with a `dataset` column. Each dataset's stage output is a Delta
  table (<storage root>/<dataset>/<stage>/), read with DuckDB's `delta_scan` (latest committed version); the
  `stage_tables` var lists them. `columns` maps column → SQL type: the contract columns a model reads. A stage no
  dataset has produced yet reads as an empty table of those columns, so reports build early.
  The `source()` call records the lineage (Dagster maps each source to the stage's assets).
#}
{% macro stage_rows(stage, columns) -%}
  {%- set relation = source('datamate', stage) -%}
  {%- set found = var('stage_tables', {}).get(stage, []) -%}
  {%- if found -%}
    select
      dataset
      {%- for name, type in columns.items() %}, cast("{{ name }}" as {{ type }}) as "{{ name }}"{% endfor %}
    from (
      {%- for table in found %}
      select '{{ table.dataset | replace("'", "''") }}' as dataset, *
      from delta_scan('{{ table.uri | replace("'", "''") }}')
      {{ "union all by name" if not loop.last }}
      {%- endfor %}
    )
  {%- else -%}
    select
      cast(null as varchar) as dataset
      {%- for name, type in columns.items() %}, cast(null as {{ type }}) as "{{ name }}"{% endfor %}
    where false
  {%- endif -%}
{%- endmacro %}
